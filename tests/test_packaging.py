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
