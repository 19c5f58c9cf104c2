"""Where a source's files sit must not change the documents a run reads or their order."""

import shutil

from ftbench.config.schema import SourceConfig
from ftbench.data.units import plan_source, read_unit


def _read_all(data_dir, src, seed, unit_bytes):
    units = plan_source(src, 0, data_dir, unit_bytes, seed)
    return [u.key() for u in units], [(d.id, d.text) for u in units
                                      for d in read_unit(u, src, seed)]


def test_a_mirror_copied_elsewhere_gives_the_same_documents_in_the_same_order(data_dir,
                                                                            tmp_path):
    """Two copies of the same files under different roots (different depths, different
    names): the same unit keys, and every unit's documents shuffled the same way. A key
    that hashes absolute paths seeds each unit's shuffle differently per copy."""
    files = ["corpus/tinyshakespeare.jsonl.gz", "corpus/tinystories_subset.jsonl.gz"]
    reads = []
    for where in ("a", "b/deeper/mirror"):
        root = tmp_path / where
        for rel in files:
            (root / "corpus").mkdir(parents=True, exist_ok=True)
            shutil.copy(data_dir / rel, root / rel)
        src = SourceConfig(kind="jsonl", path="corpus", text_field="text")
        reads.append(_read_all(root, src, seed=7, unit_bytes=64 * 1024))
    (keys_a, docs_a), (keys_b, docs_b) = reads
    assert len(keys_a) >= 4  # several units, each holding many documents
    assert keys_a == keys_b
    assert len(docs_a) > 2 * len(keys_a)
    assert docs_a == docs_b
