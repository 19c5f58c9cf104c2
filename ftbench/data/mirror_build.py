"""`ftbench data mirror DIR`: build the data mirror from its public origins.

Every file of the mirror (docs/data-mirror.md) is listed in `mirror_manifest.json`, shipped
with the package, with its sha256, its size and where it comes from:

- `url`: a byte copy of one upstream file (a raw file of a public git repository at a
  pinned commit);
- `archive`: a member of an upstream archive (the MMLU CSVs, from a zip);
- `recipe`: a file derived from upstream inputs (the training corpus, JSON Lines written
  with gzip mtime=0), rebuilt here by the same procedure, byte for byte.

Downloads go to a `.part` file that a rerun continues with an HTTP Range request, are
checked against their sha256, and are renamed into place only when they match. With a base
URL (`--base-url` or $FTBENCH_MIRROR_URL), every file is fetched as `<base>/<path>` from a
mirror laid out the same way instead, and checked against the same hashes.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

from ftbench.data.errors import DataError

MANIFEST = Path(__file__).with_name("mirror_manifest.json")
ENV_BASE_URL = "FTBENCH_MIRROR_URL"
CACHE = ".mirror-downloads"  # upstream inputs of derived files; removed once complete
SUMS = "SHA256SUMS"
_CHUNK = 1 << 16


class MirrorError(DataError):
    """A file of the mirror could not be fetched, verified or rebuilt."""


def load_manifest(path: Path | None = None) -> dict:
    return json.loads((path or MANIFEST).read_text(encoding="utf-8"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- downloads

def _bar(total: int | None, initial: int, label: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=label, leave=False, dynamic_ncols=True, mininterval=0.5)


def download(url: str, dest: Path, sha256: str, size: int | None = None, label: str = "",
             progress: bool = True, retries: int = 4, timeout: float = 60.0) -> Path:
    """Fetch `url` into `dest` through `dest.part`, resuming what a `.part` already holds.

    A broken connection is retried from where it stopped (HTTP Range). The file is renamed
    into place only when its sha256 is `sha256`; a complete `dest` that already matches is
    kept as it is.
    """
    label = label or dest.name
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error = ""
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.is_file() else 0
        if size is not None and have > size:
            part.unlink()
            have = 0
        if size is not None and have == size:
            break
        try:
            _fetch_into(url, part, have, size, label, progress, timeout)
            break
        except (OSError, http.client.HTTPException) as e:  # URLError, resets, timeouts
            if isinstance(e, urllib.error.HTTPError) and e.code not in (408, 429, 500, 502,
                                                                         503, 504):
                raise MirrorError(f"{label}: {url} answered HTTP {e.code} ({e.reason}); check "
                                  f"the URL, or give --base-url of a mirror that has the "
                                  "file") from None
            last_error = f"{type(e).__name__}: {e}"
            if attempt < retries:
                time.sleep(min(0.2 * 2 ** attempt, 5.0))
    else:
        kept = part.stat().st_size if part.is_file() else 0
        then = (f"the {kept:,} bytes that arrived are kept in {part}, and rerunning the same "
                "command continues from there" if kept else
                "nothing arrived: check the network and the URL (or give --base-url)")
        raise MirrorError(f"{label}: the download from {url} kept failing ({last_error}); "
                          f"{then}")
    got = sha256_file(part)
    if got != sha256:
        part.unlink()
        raise MirrorError(
            f"{label}: corrupt download from {url}: sha256 {got}, expected {sha256}. The "
            "damaged copy was deleted; rerun to download it again, and if this repeats, the "
            "origin serves other bytes than the mirror records: use --base-url with a mirror "
            "you trust")
    os.replace(part, dest)
    return dest


def _fetch_into(url: str, part: Path, have: int, size: int | None, label: str,
                progress: bool, timeout: float) -> None:
    headers = {"User-Agent": "ftbench-mirror"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing after what we hold: the .part is complete
            return
        raise
    with resp:
        if have and resp.status != 206:  # the server ignored the range: start again
            have = 0
        mode = "ab" if have else "wb"
        length = resp.headers.get("Content-Length")
        total = size if size is not None else (have + int(length) if length else None)
        bar = _bar(total, have, label, progress)
        got = 0
        expected = int(length) if length is not None else None
        try:
            with open(part, mode) as f:
                while True:
                    block = resp.read(_CHUNK)
                    if not block:
                        break
                    f.write(block)
                    got += len(block)
                    if bar is not None:
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
        if expected is not None and got < expected:
            raise http.client.IncompleteRead(b"", expected - got)


# --------------------------------------------------------------------------- derived files

def _gzip_jsonl(records) -> bytes:
    """JSON Lines (UTF-8, non-ASCII kept) in a gzip with mtime=0, no file name, level 9:
    the same input gives the same bytes."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="", compresslevel=9) as g:
        g.write(data)
    return buf.getvalue()


def _text(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


def recipe_single_text(inputs: list[tuple[dict, Path]], spec: dict) -> bytes:
    """One upstream text file, stored unchanged as one document."""
    (meta, path), = inputs
    return _gzip_jsonl([{"text": _text(path), "source": spec["source"], "id": meta["id"]}])


TINYSTORIES_STARTS = ("Once upon a time", "Once there", "Once,")


def split_stories(text: str) -> list[str]:
    """Paragraphs are separated by a blank line, and so are stories: a story starts at a
    paragraph that opens like one; other paragraphs belong to the story before them."""
    stories: list[list[str]] = []
    for para in text.split("\n\n"):
        para = para.strip()
        if not para:
            continue
        if para.startswith(TINYSTORIES_STARTS) and stories and stories[-1]:
            stories.append([])
        if not stories:
            stories.append([])
        stories[-1].append(para)
    return ["\n\n".join(s) + "\n" for s in stories]


def recipe_stories(inputs: list[tuple[dict, Path]], spec: dict) -> bytes:
    records = []
    for meta, path in inputs:
        for i, story in enumerate(split_stories(_text(path))):
            records.append({"text": story, "source": meta["source"], "id": f"{meta['id']}-{i}"})
    return _gzip_jsonl(records)


_PG_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG EBOOK.*$", re.M | re.I)
_PG_END = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG EBOOK.*$", re.M | re.I)
_PG_NUMBER = re.compile(r"\[ebook #(\d+)\]", re.I)


def gutenberg_record(text: str, file: str) -> dict:
    """The body of a Project Gutenberg plain-text ebook between its START and END markers
    (header, licence and trademark text dropped), with its number, title and author."""
    if text.startswith("\ufeff"):
        text = text[1:]
    text = text.replace("\r\n", "\n")
    start, end = _PG_START.search(text), _PG_END.search(text)
    if not start or not end:
        raise MirrorError(f"{file}: no Project Gutenberg START/END markers; not an ebook text")
    head = text[:start.start()]

    def field(name: str) -> str:
        m = re.search(rf"^{name}:[ \t]*(.*)$", head, re.M)
        return m.group(1).strip() if m else ""

    if field("Language") != "English":
        raise MirrorError(f"{file}: language {field('Language')!r}, not English")
    number = _PG_NUMBER.search(head)
    if not number:
        raise MirrorError(f"{file}: no ebook number in the Project Gutenberg header")
    body = text[start.end():end.start()].lstrip("\r\n").rstrip() + "\n"
    return {"text": body, "source": "gutenberg", "id": f"pg{number.group(1)}",
            "title": field("Title"), "author": field("Author"), "file": file}


def recipe_gutenberg(inputs: list[tuple[dict, Path]], spec: dict) -> bytes:
    ordered = sorted(inputs, key=lambda x: x[0]["id"])
    return _gzip_jsonl(gutenberg_record(_text(p), m["id"]) for m, p in ordered)


def _ar_member(path: Path, name: str) -> bytes:
    """One member of a Debian package (an `ar` archive)."""
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise MirrorError(f"{path}: not a Debian package (no ar header)")
        while True:
            header = f.read(60)
            if len(header) < 60:
                break
            member = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            data = f.read(size)
            if size % 2:
                f.read(1)
            if member == name:
                return data
    raise MirrorError(f"{path}: no {name} inside the package")


def recipe_debian_rst(inputs: list[tuple[dict, Path]], spec: dict) -> bytes:
    """The reStructuredText sources of a Sphinx documentation package, one page per line,
    in path order, pages shorter than `min_chars` dropped."""
    (meta, deb), = inputs
    prefix = spec["prefix"]
    pages = {}
    with tarfile.open(fileobj=io.BytesIO(_ar_member(deb, spec["member"])), mode="r:*") as tar:
        for m in tar:
            name = m.name[2:] if m.name.startswith("./") else m.name
            if m.isfile() and name.startswith(prefix) and name.endswith(".rst.txt"):
                pages[name[len(prefix):]] = tar.extractfile(m).read().decode("utf-8")
    records = [{"text": t, "source": spec["source"], "id": rel}
               for rel, t in sorted(pages.items(), key=lambda kv: PurePosixPath(kv[0]).parts)
               if len(t) >= spec["min_chars"]]
    return _gzip_jsonl(records)


def recipe_json_compact(inputs: list[tuple[dict, Path]], spec: dict) -> bytes:
    """A pretty-printed JSON file written again as one line by Python's json.dumps with
    its default settings (what the original file was)."""
    (meta, path), = inputs
    return json.dumps(json.loads(_text(path))).encode("utf-8")


RECIPES: dict[str, Callable[[list[tuple[dict, Path]], dict], bytes]] = {
    "single_text": recipe_single_text,
    "stories": recipe_stories,
    "gutenberg": recipe_gutenberg,
    "debian_rst": recipe_debian_rst,
    "json_compact": recipe_json_compact,
}


# --------------------------------------------------------------------------- the build

def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _check_built(entry: dict, data: bytes, origin: str) -> None:
    got = hashlib.sha256(data).hexdigest()
    if got == entry["sha256"]:
        return
    hint = ("the upstream inputs matched their hashes, so the procedure itself gave other "
            "bytes here")
    if entry["path"].endswith(".gz"):
        content = hashlib.sha256(gzip.decompress(data)).hexdigest()
        if content == entry.get("content_sha256"):
            hint = ("the text is identical but the gzip bytes differ: this Python's zlib "
                    f"compresses differently from zlib {entry.get('zlib', '1.2.13')}")
    raise MirrorError(f"{entry['path']}: rebuilt from {origin}, sha256 {got}, expected "
                      f"{entry['sha256']} ({hint}). Fetch the file itself with --base-url "
                      "from a mirror that has it")


def fetch_input(manifest: dict, name: str, cache: Path, progress: bool) -> Path:
    """An upstream input of derived files, from its URL or, failing that, its fallbacks
    (a package archive drops superseded versions; its snapshot service keeps them)."""
    a = manifest["inputs"][name]
    urls = [a["url"], *a.get("fallback_urls", [])]
    for i, url in enumerate(urls):
        try:
            return download(url, cache / a["cache"], a["sha256"], a.get("size"), a["cache"],
                            progress)
        except MirrorError:
            if i == len(urls) - 1:
                raise
    raise AssertionError("unreachable")


def build_entry(entry: dict, dest: Path, manifest: dict, cache: Path, base_url: str | None,
                progress: bool = True) -> None:
    """Fetch or rebuild one file of the mirror into dest/<path>, verified."""
    target = dest / entry["path"]
    if base_url:
        download(f"{base_url.rstrip('/')}/{entry['path']}", target, entry["sha256"],
                 entry.get("size"), entry["path"], progress)
        return
    if "url" in entry:
        download(entry["url"], target, entry["sha256"], entry.get("size"), entry["path"],
                 progress)
    elif "archive" in entry:
        archive = fetch_input(manifest, entry["archive"], cache, progress)
        with zipfile.ZipFile(archive) as z:
            try:
                data = z.read(entry["member"])
            except KeyError:
                raise MirrorError(f"{entry['path']}: {entry['member']} is not in "
                                  f"{archive.name}") from None
        _check_built(entry, data, f"{archive.name}:{entry['member']}")
        _write_atomic(target, data)
    elif "recipe" in entry:
        recipe = RECIPES[entry["recipe"]["name"]]
        inputs = []
        for name in entry["recipe"]["inputs"]:
            inputs.append((manifest["inputs"][name],
                           fetch_input(manifest, name, cache, progress)))
        data = recipe(inputs, entry["recipe"])
        _check_built(entry, data, ", ".join(entry["recipe"]["inputs"][:3]) +
                     (" ..." if len(entry["recipe"]["inputs"]) > 3 else ""))
        _write_atomic(target, data)
    else:
        raise MirrorError(f"{entry['path']}: the manifest gives no url, archive or recipe")


def _intact(path: Path, entry: dict) -> bool:
    return (path.is_file() and path.stat().st_size == entry.get("size", path.stat().st_size)
            and sha256_file(path) == entry["sha256"])


def build_mirror(dest: Path, manifest: dict | None = None, base_url: str | None = None,
                 progress: bool = True, log: Callable[[str], None] = print,
                 only: list[str] | None = None) -> dict:
    """Make `dest` a complete, verified mirror; returns {"fetched": n, "kept": n}.

    Files already present with the right sha256 are kept; others are fetched (or rebuilt).
    SHA256SUMS is written last, so that it marks a complete mirror. `only` restricts the
    build to the paths starting with any of its prefixes, and then writes no SHA256SUMS.
    """
    manifest = manifest or load_manifest()
    base_url = base_url if base_url is not None else (os.environ.get(ENV_BASE_URL) or None)
    if base_url and not re.match(r"(https?|file)://", base_url):
        raise MirrorError(f"base URL {base_url!r} has no scheme; give it as http://HOST[:PORT]"
                          "/PATH, https://... or file:///PATH")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cache = dest / CACHE
    entries = [e for e in manifest["files"]
               if not only or any(e["path"].startswith(p) for p in only)]
    todo = [e for e in entries if not _intact(dest / e["path"], e)]
    if todo:
        where = base_url or "their public origins"
        log(f"mirror: {len(todo)} of {len(entries)} files to fetch from {where} into {dest}")
    for e in todo:
        build_entry(e, dest, manifest, cache, base_url, progress)
    if cache.exists():
        shutil.rmtree(cache)
    if not only:
        lines = "".join(sorted(f"{e['sha256']}  ./{e['path']}\n" for e in entries))
        sums = dest / SUMS
        if not sums.is_file() or sums.read_text() != lines:
            _write_atomic(sums, lines.encode())
    return {"fetched": len(todo), "kept": len(entries) - len(todo), "files": len(entries),
            "sums": not only}
