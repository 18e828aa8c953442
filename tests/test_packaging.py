"""Packaging: every Python package directory is listed in setup.cfg, and the mapped folders import."""

import configparser

from testutils import REPO


def test_every_package_is_listed_in_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    mapping = dict(line.split(" = ") for line in cfg["options"]["package_dir"].strip().splitlines())
    found = set()
    for name, folder in mapping.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found == listed, f"setup.cfg [options] packages must list exactly {sorted(found)}"


def test_top_level_folders_import_as_subpackages():
    import slowfast_vgen.callbacks
    import slowfast_vgen.datamodules

    assert slowfast_vgen.datamodules.__file__.startswith(str(REPO / "datamodules"))
    assert slowfast_vgen.callbacks.__file__.startswith(str(REPO / "callbacks"))


def package_data_patterns() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return [p.strip() for p in cfg["options.package_data"]["slowfast_vgen"].split(",") if p.strip()]


def test_package_data_patterns_match_real_files():
    for pattern in package_data_patterns():
        assert list((REPO / "src" / "slowfast_vgen").glob(pattern)), f"setup.cfg package_data {pattern!r} matches nothing"


def test_the_packaged_demo_config_is_the_experiments_one():
    """``sfvgen demo`` reads the package's copy; it must not drift from the user-facing experiments/ file."""
    packaged = REPO / "src" / "slowfast_vgen" / "configs" / "world_demo.yaml"
    assert packaged.read_bytes() == (REPO / "experiments" / "world_demo.yaml").read_bytes(), (
        "src/slowfast_vgen/configs/world_demo.yaml must be an identical copy of experiments/world_demo.yaml"
    )


def test_demo_defaults_resolve_inside_the_package():
    from slowfast_vgen.experiment import DEFAULT_CONFIG, DEFAULT_WEIGHTS, PACKAGE

    for path in (DEFAULT_CONFIG, DEFAULT_WEIGHTS):
        assert path.is_file() and path.is_relative_to(PACKAGE), path


def test_the_wheel_ships_the_demo_config_and_weights(tmp_path):
    """A non-editable install (a wheel) holds the files the demo's defaults point at, next to demo.py."""
    import shutil
    import subprocess
    import sys
    import zipfile

    import pytest

    pytest.importorskip("setuptools")
    from slowfast_vgen.experiment import DEFAULT_CONFIG, DEFAULT_WEIGHTS, PACKAGE

    src = tmp_path / "src_copy"  # build from a copy: no build/ or egg-info in the working tree
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("src", "datamodules", "callbacks"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path / "wheels"
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    if run.returncode != 0 and "No module named pip" in run.stderr:
        pytest.skip("pip is not available")
    assert run.returncode == 0, run.stderr[-3000:]
    (wheel,) = out.glob("slowfast_vgen-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "slowfast_vgen/demo.py" in names
        for path in (DEFAULT_CONFIG, DEFAULT_WEIGHTS):
            assert f"slowfast_vgen/{path.relative_to(PACKAGE).as_posix()}" in names, sorted(names)
        shipped = zf.read(f"slowfast_vgen/{DEFAULT_CONFIG.relative_to(PACKAGE).as_posix()}")
    assert shipped == (REPO / "experiments" / "world_demo.yaml").read_bytes()
