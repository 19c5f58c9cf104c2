"""`ftbench data mirror`: the real download and rebuild code against a local HTTP server.

The server serves the files of the data mirror named by $FTBENCH_DATA_DIR (read in place).
Expected hashes come from that mirror's files themselves, hashed here, not from the
manifest under test. Upstream inputs that the mirror does not hold (the MMLU zip, the texts
the corpus was derived from, the Debian documentation package) are put together in
tmp_path from the mirror's own files, so each rebuild procedure must reproduce the
mirror's bytes from inputs laid out as upstream lays them out.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftbench.data import mirror_build as mb
from tests.data.hub_server import FileServer


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def manifest() -> dict:
    return mb.load_manifest()


@pytest.fixture()
def server(data_dir):
    with FileServer(root=data_dir) as s:
        yield s


def test_manifest_covers_the_mirror(manifest, data_dir):
    listed = {e["path"] for e in manifest["files"]}
    on_disk = {p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*") if p.is_file()}
    # SOURCES.md files are prose about the origins, and SHA256SUMS is written by the build.
    assert listed == {p for p in on_disk if not p.endswith(("SOURCES.md", "SHA256SUMS"))}
    kinds = {k for e in manifest["files"] for k in ("url", "archive", "recipe") if k in e}
    assert kinds == {"url", "archive", "recipe"}


def test_full_build_equals_the_mirror_byte_for_byte(tmp_path, server, data_dir, manifest):
    out = tmp_path / "mirror"
    result = mb.build_mirror(out, base_url=server.url, progress=False, log=lambda m: None)
    assert result["fetched"] == len(manifest["files"]) == result["files"]
    for e in manifest["files"]:
        assert sha(out / e["path"]) == sha(data_dir / e["path"]), e["path"]
    assert not list(out.rglob("*.part")) and not (out / mb.CACHE).exists()
    # SHA256SUMS agrees with the reference mirror's own on every file that lists.
    ours = dict(reversed(line.split()) for line in (out / "SHA256SUMS").read_text().splitlines())
    ref = dict(reversed(line.split())
               for line in (data_dir / "SHA256SUMS").read_text().splitlines())
    assert ref.items() <= ours.items()
    assert len(ours) == len(manifest["files"])

    # A complete mirror is verified and left as it is: nothing is requested again.
    server.requests.clear()
    again = mb.build_mirror(out, base_url=server.url, progress=False, log=lambda m: None)
    assert again["fetched"] == 0 and server.requests == []


def _upstream_inputs(tmp: Path, data_dir: Path) -> dict[str, Path]:
    """Upstream-shaped inputs rebuilt from the mirror's files: the mirror's own bytes must
    come back out of each procedure."""
    files: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        files[name] = tmp / "upstream" / name
        files[name].parent.mkdir(parents=True, exist_ok=True)
        files[name].write_bytes(data)

    def records(path: str) -> list[dict]:
        with gzip.open(data_dir / path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    # MMLU: a zip whose members are data/<split>/<file>, as the upstream zip has them.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted((data_dir / "mmlu" / "data").rglob("*")):
            if p.is_file():
                z.writestr(p.relative_to(data_dir / "mmlu").as_posix(), p.read_bytes())
    put("mmlu.zip", buf.getvalue())
    # Tiny Shakespeare: one document, the upstream text itself.
    put("input.txt", records("corpus/tinyshakespeare.jsonl.gz")[0]["text"].encode())
    # TinyStories: each export is its paragraphs separated by blank lines, stories too; the
    # exports leave a space at the end of some paragraphs, which the documents do not keep.
    for src, name in (("tinystories-validation-head", "val.txt"),
                      ("tinystories-train-head", "train.txt")):
        paras = [p + " " * (i % 2) for r in records("corpus/tinystories_subset.jsonl.gz")
                 if r["source"] == src for i, p in enumerate(r["text"].rstrip("\n").split("\n\n"))]
        put(name, ("\n\n".join(paras) + "\n").encode())
    # Gutenberg: each book wrapped in a Project Gutenberg header, markers and licence, CRLF.
    for r in records("corpus/gutenberg_en.jsonl.gz"):
        author = f"Author: {r['author']}\r\n\r\n" if r["author"] else ""
        head = (f"\ufeffThe Project Gutenberg eBook of {r['title']}\r\n\r\n"
                f"Title: {r['title']}\r\n\r\n{author}"
                f"Release date: January 1, 2000 [eBook #{r['id'][2:]}]\r\n\r\n"
                "Language: English\r\n\r\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\r\n")
        tail = "\r\n\r\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\r\n\r\nSection 1. ..."
        put("gutenberg/" + r["file"], (head + r["text"].replace("\n", "\r\n") + tail).encode())
    # Python docs: a Debian package (ar) whose data tarball holds the _sources pages, plus
    # a short page that the procedure must drop.
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w:gz") as tar:
        pages = [(r["id"], r["text"]) for r in records("corpus/python_docs_3.11.jsonl.gz")]
        for rel, text in reversed(pages + [("short.rst.txt", "too short")]):
            data = text.encode()
            info = tarfile.TarInfo("./usr/share/doc/python3.11/html/_sources/" + rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    member = tar_buf.getvalue()
    ar = b"!<arch>\n" + b"debian-binary   0           0     0     100644  4         `\n2.0\n"
    ar += (b"data.tar.gz/".ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6)
           + b"100644".ljust(8) + str(len(member)).encode().ljust(10) + b"`\n" + member
           + (b"\n" if len(member) % 2 else b""))
    put("python3.11-doc.deb", ar)
    # sanitized MBPP: the pretty-printed copy.
    put("sanitized-mbpp.json",
        json.dumps(json.loads((data_dir / "mbpp/sanitized-mbpp.json").read_text()),
                   indent=2).encode())
    return files


def test_every_origin_kind_rebuilds_the_mirrors_bytes(tmp_path, data_dir, manifest):
    """Raw files, archive members and every derivation, from upstream-shaped inputs."""
    up = _upstream_inputs(tmp_path, data_dir)
    routes = {"/up/" + k: v for k, v in up.items()}
    routes["/raw/gsm8k/test.jsonl"] = data_dir / "gsm8k/test.jsonl"

    def inp(name, cache, **extra):
        p = up[name]
        return {"url": f"{srv.url}/up/{name}", "sha256": sha(p), "size": p.stat().st_size,
                "cache": cache, **extra}

    with FileServer(routes=routes) as srv:
        by_path = {e["path"]: e for e in manifest["files"]}
        inputs = {
            "zip": inp("mmlu.zip", "mmlu.zip"),
            "shakespeare": inp("input.txt", "input.txt", id="input.txt"),
            "val": inp("val.txt", "val.txt", id="valid", source="tinystories-validation-head"),
            "train": inp("train.txt", "train.txt", id="train", source="tinystories-train-head"),
            "deb": inp("python3.11-doc.deb", "doc.deb"),
            "mbpp": inp("sanitized-mbpp.json", "sanitized.json"),
        }
        books = sorted(k for k in up if k.startswith("gutenberg/"))
        for b in books:
            inputs[b] = inp(b, b, id=b[len("gutenberg/"):])
        mmlu = [e for e in manifest["files"] if "archive" in e]
        files = [
            {**by_path["gsm8k/test.jsonl"], "url": f"{srv.url}/raw/gsm8k/test.jsonl"},
            *({**e, "archive": "zip"} for e in mmlu),
            {**by_path["corpus/tinyshakespeare.jsonl.gz"],
             "recipe": {**by_path["corpus/tinyshakespeare.jsonl.gz"]["recipe"],
                        "inputs": ["shakespeare"]}},
            {**by_path["corpus/tinystories_subset.jsonl.gz"],
             "recipe": {"name": "stories", "inputs": ["val", "train"]}},
            {**by_path["corpus/gutenberg_en.jsonl.gz"],
             "recipe": {"name": "gutenberg", "inputs": books}},
            {**by_path["corpus/python_docs_3.11.jsonl.gz"],
             "recipe": {**by_path["corpus/python_docs_3.11.jsonl.gz"]["recipe"],
                        "inputs": ["deb"], "member": "data.tar.gz"}},
            {**by_path["mbpp/sanitized-mbpp.json"],
             "recipe": {"name": "json_compact", "inputs": ["mbpp"]}},
        ]
        out = tmp_path / "mirror"
        mb.build_mirror(out, manifest={"files": files, "inputs": inputs}, base_url="",
                        progress=False, log=lambda m: None)
    assert len(mmlu) == 173
    for e in files:
        assert sha(out / e["path"]) == sha(data_dir / e["path"]), e["path"]
    assert not (out / mb.CACHE).exists()


def test_a_corrupt_download_is_refused(tmp_path, server, data_dir, manifest):
    entry = next(e for e in manifest["files"] if e["path"] == "gsm8k/test.jsonl")
    good = (data_dir / entry["path"]).read_bytes()
    bad = bytearray(good)
    bad[1000] ^= 1
    server.faults.replace["/gsm8k/test.jsonl"] = bytes(bad)
    out = tmp_path / "mirror"
    with pytest.raises(mb.MirrorError) as err:
        mb.build_mirror(out, base_url=server.url, progress=False, log=lambda m: None,
                        only=["gsm8k/test.jsonl"])
    msg = str(err.value)
    assert "gsm8k/test.jsonl" in msg and "corrupt" in msg
    assert hashlib.sha256(bad).hexdigest() in msg and hashlib.sha256(good).hexdigest() in msg
    assert "rerun" in msg
    assert not (out / "gsm8k/test.jsonl").exists()
    assert not (out / "gsm8k/test.jsonl.part").exists()


def test_cli_exits_2_with_one_line_on_a_corrupt_file(tmp_path, server, data_dir):
    from ftbench.data.cli import data_app

    server.faults.replace["/gsm8k/train.jsonl"] = b"not the file"
    res = CliRunner().invoke(data_app, ["mirror", str(tmp_path / "m"), "--base-url",
                                        server.url, "--only", "gsm8k/", "--quiet"])
    assert res.exit_code == 2, res.output
    err_lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and "gsm8k/train.jsonl" in err_lines[0]
    # A good mirror: exit 0, and the files it fetched are the mirror's.
    server.faults.replace.clear()
    res = CliRunner().invoke(data_app, ["mirror", str(tmp_path / "m"), "--base-url",
                                        server.url, "--only", "gsm8k/", "--quiet"])
    assert res.exit_code == 0, res.output
    assert sha(tmp_path / "m/gsm8k/train.jsonl") == sha(data_dir / "gsm8k/train.jsonl")
    # Part of a mirror is not a mirror: SHA256SUMS marks a complete one.
    assert not (tmp_path / "m/SHA256SUMS").exists()


def test_a_dropped_connection_is_resumed_from_the_part_file(tmp_path, server, data_dir):
    path = "corpus/tinystories_subset.jsonl.gz"
    want = sha(data_dir / path)
    size = (data_dir / path).stat().st_size
    cut = 100_000
    server.faults.drop_after["/" + path] = cut
    dest = tmp_path / "m" / path
    # With no retries the first attempt fails, keeping what arrived in the .part file.
    with pytest.raises(mb.MirrorError, match="continues from there"):
        mb.download(f"{server.url}/{path}", dest, want, size, path, progress=False, retries=0)
    part = dest.with_name(dest.name + ".part")
    assert part.stat().st_size == cut and not dest.exists()
    # The rerun asks only for the rest, and the file is complete and verified.
    server.requests.clear()
    mb.download(f"{server.url}/{path}", dest, want, size, path, progress=False)
    assert [r.range for r in server.requests] == [f"bytes={cut}-"]
    assert sha(dest) == want and not part.exists()


def test_a_build_retries_a_dropped_connection_itself(tmp_path, server, data_dir):
    path = "gsm8k/train.jsonl"
    server.faults.drop_after["/" + path] = 12_345
    out = tmp_path / "m"
    mb.build_mirror(out, base_url=server.url, progress=False, log=lambda m: None, only=[path])
    assert [r.range for r in server.requests if r.path == "/" + path] == [None, "bytes=12345-"]
    assert sha(out / path) == sha(data_dir / path)


def test_a_base_url_without_scheme_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(mb.MirrorError, match="no scheme"):
        mb.build_mirror(tmp_path / "m", base_url="localhost:8000", progress=False)
    assert not (tmp_path / "m").exists()
