#!/usr/bin/env python
"""Make ``import detectron2`` work in the current Python environment.

Two install paths are supported (see README, "detectron2"):

1. Official source build (machines that can reach GitHub and have a compiler)::

       pip install 'git+https://github.com/facebookresearch/detectron2.git'

   When detectron2 already imports, this script does nothing.

2. Pure-Python detectron2 from PyPI (machines that only reach PyPI). No PyPI source distribution carries
   detectron2's C++ sources, but the ``sal-detectron2==0.7.2`` wheel holds detectron2's Python code
   (official main of mid-2024) next to a compiled ``_C`` for CPython 3.10 only. This script downloads that
   wheel, drops the compiled extension, re-tags it as a pure ``py3-none-any`` wheel and installs it with
   its runtime dependencies. Deformable conv, rotated-box ops and the fast COCOeval are then unavailable
   (``ffs_det.detectron2_compat`` logs that once); the rest of detectron2 works.
"""
import argparse
import email
import hashlib
import base64
import os
import subprocess
import sys
import tempfile
import zipfile

PURE_PACKAGE = "sal-detectron2"
PURE_VERSION = "0.7.2"
# model_zoo imports pkg_resources, which setuptools >= 81 no longer ships.
EXTRA_REQUIREMENTS = ["setuptools<81"]


def detectron2_location():
    """Return where detectron2 is importable from in this interpreter, or None."""
    code = "import detectron2, os; print(os.path.dirname(detectron2.__file__))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def pip(*args):
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def repack_pure(wheel_path, out_dir):
    """Write a py3-none-any copy of ``wheel_path`` without compiled extensions; return (path, requires)."""
    base = os.path.basename(wheel_path).split("-")
    dist, version = base[0], base[1]
    out_path = os.path.join(out_dir, f"{dist}-{version}-py3-none-any.whl")
    dist_info = f"{dist}-{version}.dist-info"
    requires = []
    records = []
    with zipfile.ZipFile(wheel_path) as src, zipfile.ZipFile(out_path, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            name = item.filename
            if name.endswith((".so", ".pyd")) or name == f"{dist_info}/RECORD":
                continue
            data = src.read(name)
            if name == f"{dist_info}/WHEEL":
                lines = [ln for ln in data.decode().splitlines() if not ln.startswith(("Tag:", "Root-Is-Purelib:"))]
                data = ("\n".join(lines + ["Root-Is-Purelib: true", "Tag: py3-none-any"]) + "\n").encode()
            if name == f"{dist_info}/METADATA":
                meta = email.message_from_bytes(data)
                requires = [r for r in meta.get_all("Requires-Dist", []) if ";" not in r]
            dst.writestr(name, data)
            records.append(_record_line(name, data))
        records.append(f"{dist_info}/RECORD,,")
        dst.writestr(f"{dist_info}/RECORD", "\n".join(records) + "\n")
    return out_path, requires


def install_pure(cache_dir):
    os.makedirs(cache_dir, exist_ok=True)
    wheels = [f for f in os.listdir(cache_dir) if f.endswith(".whl") and "cp310" in f]
    if not wheels:
        pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.10",
            "--implementation", "cp", f"{PURE_PACKAGE}=={PURE_VERSION}", "-d", cache_dir)
        wheels = [f for f in os.listdir(cache_dir) if f.endswith(".whl") and "cp310" in f]
    with tempfile.TemporaryDirectory() as tmp:
        pure, requires = repack_pure(os.path.join(cache_dir, wheels[0]), tmp)
        # The wheel pins numpy<2 for its compiled part only; the Python code runs with the numpy torch uses.
        requires = ["numpy" if r.replace(" ", "").startswith("numpy") else r for r in requires]
        pip("install", *requires, *EXTRA_REQUIREMENTS)
        pip("install", "--no-deps", "--force-reinstall", pure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=os.path.join(sys.prefix, "cache", "detectron2"),
                        help="where the downloaded wheel is kept (default: inside the environment)")
    parser.add_argument("--force", action="store_true", help="install the pure-Python build even if one imports")
    args = parser.parse_args(argv)
    where = detectron2_location()
    if where and not args.force:
        print(f"detectron2 already importable from {where}; nothing to do")
        return 0
    install_pure(args.cache_dir)
    where = detectron2_location()
    if not where:
        print("error: detectron2 still does not import after installing the pure-Python build", file=sys.stderr)
        return 1
    print(f"installed pure-Python detectron2 at {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
