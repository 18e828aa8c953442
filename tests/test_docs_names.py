"""The class names that docs/data-format.md gives exist in the code (a renamed class must not leave the doc behind)."""

import re

import pytest

from testutils import REPO

CODE = ("src", "datamodules", "callbacks")
EXTERNAL = {"DistributedSampler", "StatefulDataLoader", "SimpleShardList", "TarWriter"}  # torch, torchdata, webdataset


def defined_names() -> set[str]:
    names = set()
    for folder in CODE:
        for path in (REPO / folder).rglob("*.py"):
            names |= set(re.findall(r"^\s*(?:class|def)\s+(\w+)", path.read_text(encoding="utf-8"), re.M))
    return names


@pytest.mark.parametrize("doc", ["docs/data-format.md"])
def test_class_names_in_the_doc_exist(doc):
    text = (REPO / doc).read_text(encoding="utf-8")
    cited = set(re.findall(r"`([A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+)`", text))  # `CamelCase` names
    assert cited, "no class names found: the pattern is wrong"
    missing = sorted(cited - defined_names() - EXTERNAL)
    assert not missing, f"{doc} names classes that do not exist in {CODE}: {missing}"
