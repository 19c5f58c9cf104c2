"""Render a report Document to GitHub Markdown (report.md + figures/) and to one
self-contained HTML file (report.html, figures embedded, no external resources).

Both renderers share one reading of the inline markup (`code spans` and **bold**) and one
rule for which table columns are numeric, so the two files differ in looks only. Every
string may come from a results file, so all text is escaped for the target format.
"""

from __future__ import annotations

import base64
import html
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from ftbench.report.document import (Banner, Block, Bullets, Document, Figure, Heading, Link,
                                     Paragraph, Preformatted, Table)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = "figures"

# A code span wins over bold when both could start at the same place; bold needs
# non-space just inside its markers so that "a ** b" stays literal, as in CommonMark.
_INLINE = re.compile(r"`([^`\n]+)`|\*\*(?=\S)(.+?)(?<=\S)\*\*", re.DOTALL)
# The first word of a numeric cell: "50.0", "+6.1", "1.250x", "-3 %", "1e-3".
_NUMBER = re.compile(r"[+\-\u2212\u00b1]?\d[\d,]*(\.\d+)?([eE][+-]?\d+)?(%|x|\u00d7)?")
_PLACEHOLDERS = {"", "\u2014", "\u2013", "-", "n/a", "nan", "not measured"}


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write via a temporary file in the same folder, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the report from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _inline(text: str, plain: Callable[[str], str], code: Callable[[str], str],
            bold: Callable[[str], str]) -> str:
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(plain(text[pos:m.start()]))
        if m.group(1) is not None:
            out.append(code(m.group(1)))
        else:
            out.append(bold(_inline(m.group(2), plain, code, bold)))
        pos = m.end()
    out.append(plain(text[pos:]))
    return "".join(out)


def plain_text(text: str) -> str:
    """The text with its inline markup removed (for <title>, alt text, anchors)."""
    return _inline(text, str, str, str)


def _is_number(cell: str) -> bool:
    """A short cell led by a number ("50.0", "+6.1 %", "55.0 ± 7.1"). Long composite cells
    ("50.0 (+20.0 pts, ...)") stay left-aligned so that their leading numbers line up."""
    first = cell.strip().split(" ", 1)[0]
    return len(cell.strip()) <= 18 and bool(_NUMBER.fullmatch(first))


def numeric_columns(table: Table) -> set[int]:
    """Columns, right-aligned in both formats, whose every filled cell is a short number;
    placeholders ("—", "n/a", "not measured") do not count."""
    width = max([len(table.header), *(len(r) for r in table.rows)])
    numeric = set()
    for j in range(width):
        cells = [r[j].strip() for r in table.rows if j < len(r)]
        filled = [c for c in cells if c.lower() not in _PLACEHOLDERS]
        if filled and all(_is_number(c) for c in filled):
            numeric.add(j)
    return numeric


def _strip_lines(text: str) -> str:
    """Lines without their indentation, which Markdown would read as a code block."""
    return "\n".join(line.strip() for line in text.strip().splitlines())


def _padded_rows(table: Table) -> tuple[list[str], list[list[str]]]:
    width = max([len(table.header), *(len(r) for r in table.rows)])

    def pad(row: list) -> list[str]:
        return [str(c) for c in row] + [""] * (width - len(row))
    return pad(table.header), [pad(r) for r in table.rows]


# ---------------------------------------------------------------------------------------
# Markdown

_MD_ESCAPE = re.compile(r"([\\`*_\[\]<~])")
_MD_ENTITY = re.compile(r"&(?=#?\w+;)")  # "&amp;" in a results string must stay literal


def _md_plain(text: str) -> str:
    return _MD_ENTITY.sub(r"\\&", _MD_ESCAPE.sub(r"\\\1", text))


def _md_code(text: str) -> str:
    return f"`{text}`"


def _md_inline(text: str, bold: Callable[[str], str] = lambda s: f"**{s}**") -> str:
    return _inline(text, _md_plain, _md_code, bold)


def _md_block_text(text: str) -> str:
    """Inline-rendered lines that cannot turn into a heading, quote, list, rule or an
    indented code block. Markup is read over the whole text, as HTML reads it."""
    rendered = _md_inline(_strip_lines(text))
    out = []
    for line in rendered.split("\n"):
        line = re.sub(r"^([#>+=-])", r"\\\1", line)
        out.append(re.sub(r"^(\d+)([.)])", r"\1\\\2", line))
    return "\n".join(out)


def _md_cell(text: str, muted: bool) -> str:
    # GFM needs "\|" even inside code spans in a table; a newline would end the row.
    text = "\n".join(" ".join(line.split()) for line in text.strip().splitlines())
    cell = _md_inline(text).replace("\n", "<br>").replace("|", "\\|")
    return f"*{cell}*" if muted and cell else cell


def _md_table(table: Table) -> str:
    header, rows = _padded_rows(table)
    numeric = numeric_columns(table)
    lines = []
    if table.caption:
        lines += [f"*{_md_inline(table.caption)}*", ""]
    lines.append("| " + " | ".join(_md_cell(h, False) for h in header) + " |")
    lines.append("|" + "|".join("---:" if j in numeric else "---" for j in range(len(header)))
                 + "|")
    for i, row in enumerate(rows):
        cells = (_md_cell(c, (i, j) in table.muted) for j, c in enumerate(row))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _md_fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text.rstrip()}\n{fence}"


class _FigureCopier:
    """Puts each Figure's PNG under out_dir/figures/, once, without clobbering another
    figure of the same name from elsewhere."""

    def __init__(self, out_dir: Path):
        self.dir = out_dir / FIGURES
        self.taken: dict[str, Path] = {}

    def place(self, png: Path) -> str:
        src = _checked_png(png).resolve()
        if src.parent == self.dir.resolve():
            self.taken[src.name] = src
            return src.name
        name, n = src.name, 1
        while name in self.taken and self.taken[name] != src:
            n += 1
            name = f"{src.stem}-{n}{src.suffix}"
        self.taken[name] = src
        dest = self.dir / name
        if not (dest.is_file() and dest.read_bytes() == src.read_bytes()):
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{name}.{os.getpid()}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        return name


def _md_block(block: Block, figures: _FigureCopier) -> str:
    if isinstance(block, Heading):
        level = min(max(block.level, 1), 6)
        text = _md_inline(" ".join(block.text.split()))
        # Trailing #s would be read as the optional closing sequence and dropped.
        text = re.sub(r"#+$", lambda m: "\\#" * len(m.group()), text)
        return "#" * level + " " + text
    if isinstance(block, Paragraph):
        return _md_block_text(block.text)
    if isinstance(block, Banner):
        # The whole banner is bold, so bold inside it is shown plain rather than nested.
        lines = _md_inline(_strip_lines(block.text), bold=str).split("\n")
        return "\n>\n".join(f"> **\u26a0 {line}**" if i == 0 else f"> **{line}**"
                            for i, line in enumerate(lines) if line)
    if isinstance(block, Table):
        return _md_table(block)
    if isinstance(block, Figure):
        name = figures.place(block.png)
        alt = re.sub(r"([\[\]\\])", r"\\\1", plain_text(block.alt or block.caption))
        image = f"![{' '.join(alt.split())}]({FIGURES}/{quote(name)})"
        return image + (f"\n\n*{_md_inline(_strip_lines(block.caption))}*" if block.caption
                        else "")
    if isinstance(block, Bullets):
        return "\n".join("- " + _md_block_text(item).replace("\n", "\n  ")
                         for item in block.items)
    if isinstance(block, Preformatted):
        return _md_fence(block.text)
    if isinstance(block, Link):
        return f"{_md_block_text(block.text)} [{_md_plain(block.href)}]({quote(block.href)})"
    raise TypeError(f"cannot render a {type(block).__name__} block")


def to_markdown(doc: Document, out_dir: Path) -> Path:
    """Write out_dir/report.md for GitHub; figures are linked from out_dir/figures/."""
    out_dir = Path(out_dir)
    figures = _FigureCopier(out_dir)
    parts = ["# " + _md_inline(" ".join(doc.title.split()))]
    parts += [_md_block(b, figures) for b in doc.blocks]
    return write_atomic(out_dir / "report.md", "\n\n".join(p for p in parts if p) + "\n")


# ---------------------------------------------------------------------------------------
# HTML

def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _html_inline(text: str) -> str:
    return _inline(text, _esc, lambda s: f"<code>{_esc(s)}</code>",
                   lambda s: f"<strong>{s}</strong>")


def _html_lines(text: str) -> str:
    """Inline markup read over the whole text (as Markdown reads it), line breaks kept."""
    return _html_inline(_strip_lines(text)).replace("\n", "<br>\n")


def _checked_png(png: Path) -> Path:
    png = Path(png)
    if not png.is_file():
        raise FileNotFoundError(f"figure {png} does not exist; write the plot before rendering")
    with open(png, "rb") as f:
        if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
            raise ValueError(f"figure {png} is not a PNG file")
    return png


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(_checked_png(png).read_bytes()).decode()


class _Anchors:
    def __init__(self):
        self.used: set[str] = set()

    def new(self, text: str) -> str:
        base = re.sub(r"[^\w]+", "-", plain_text(text).lower()).strip("-") or "section"
        slug, n = base, 1
        while slug in self.used:
            n += 1
            slug = f"{base}-{n}"
        self.used.add(slug)
        return slug


def _class_attr(**flags: bool) -> str:
    names = " ".join(name for name, on in flags.items() if on)
    return f' class="{names}"' if names else ""


def _html_table(table: Table) -> str:
    header, rows = _padded_rows(table)
    numeric = numeric_columns(table)
    out = ['<div class="table-wrap"><table>']
    if table.caption:
        out.append(f"<caption>{_html_inline(table.caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th{_class_attr(num=j in numeric)}>{_html_lines(h)}</th>"
                                       for j, h in enumerate(header)) + "</tr></thead>")
    out.append("<tbody>")
    for i, row in enumerate(rows):
        out.append("<tr>" + "".join(
            f"<td{_class_attr(num=j in numeric, muted=(i, j) in table.muted)}>{_html_lines(c)}</td>"
            for j, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _html_block(block: Block, anchors: _Anchors) -> str:
    if isinstance(block, Heading):
        level = min(max(block.level, 1), 6)
        return (f'<h{level} id="{_esc(anchors.new(block.text))}">'
                f"{_html_inline(block.text)}</h{level}>")
    if isinstance(block, Paragraph):
        return f"<p>{_html_inline(_strip_lines(block.text))}</p>"
    if isinstance(block, Banner):
        return (f'<div class="banner" role="alert"><span class="banner-icon" aria-hidden="true">'
                f"\u26a0</span><div>{_html_lines(block.text)}</div></div>")
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Figure):
        alt = _esc(plain_text(block.alt or block.caption))
        caption = (f"<figcaption>{_html_inline(_strip_lines(block.caption))}</figcaption>"
                   if block.caption else "")
        return f'<figure><img src="{_data_uri(block.png)}" alt="{alt}">{caption}</figure>'
    if isinstance(block, Bullets):
        items = (f"<li>{_html_inline(_strip_lines(item))}</li>" for item in block.items)
        return "<ul>\n" + "\n".join(items) + "\n</ul>"
    if isinstance(block, Preformatted):
        return f"<pre><code>{_esc(block.text.rstrip())}</code></pre>"
    if isinstance(block, Link):
        return (f"<p>{_html_inline(_strip_lines(block.text))} "
                f'<a href="{_esc(quote(block.href))}">{_esc(block.href)}</a></p>')
    raise TypeError(f"cannot render a {type(block).__name__} block")


def _html_toc(doc: Document) -> str:
    """Links to the level-2 headings; the anchors are replayed in block order so they match
    the ids _html_block gives."""
    anchors, links = _Anchors(), []
    for b in doc.blocks:
        if isinstance(b, Heading):
            slug = anchors.new(b.text)
            if b.level == 2:
                links.append(f'<li><a href="#{_esc(slug)}">{_html_inline(b.text)}</a></li>')
    if len(links) < 2:
        return ""
    return ('<nav class="toc" aria-label="Contents"><div class="toc-title">Contents</div><ol>'
            + "".join(links) + "</ol></nav>")


_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: #1f2328;
  font: 16px/1.6 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue",
    "Noto Sans", "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 2rem 1.5rem 4rem; }
h1 { font-size: 1.9rem; line-height: 1.25; margin: 0 0 1.2rem; }
h2 { font-size: 1.4rem; margin: 2.4rem 0 .8rem; padding-bottom: .3rem;
  border-bottom: 1px solid #d8dee4; }
h3, h4, h5, h6 { margin: 1.6rem 0 .6rem; }
p, ul { margin: .6rem 0 1rem; }
li { margin: .25rem 0; }
a { color: #0969da; text-decoration: none; }
a:hover { text-decoration: underline; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace;
  font-size: .86em; background: #eff2f5; border-radius: 4px; padding: .1em .35em; }
pre { background: #f6f8fa; border: 1px solid #d8dee4; border-radius: 6px; padding: .9rem 1rem;
  overflow-x: auto; line-height: 1.45; }
pre code { background: none; padding: 0; font-size: .84em; }
.banner { display: flex; gap: .7rem; align-items: flex-start; margin: 1rem 0;
  padding: .8rem 1rem; background: #fff4ce; border: 1px solid #f0c36d;
  border-left: 6px solid #e8890c; border-radius: 6px; color: #4d3800; font-weight: 600; }
.banner-icon { font-size: 1.25rem; line-height: 1.3; color: #c26100; }
.toc { display: inline-block; min-width: 18rem; margin: .5rem 0 1.5rem;
  padding: .7rem 1.4rem .7rem 1rem;
  background: #f6f8fa; border: 1px solid #d8dee4; border-radius: 6px; font-size: .95rem; }
.toc-title { font-weight: 600; margin-bottom: .2rem; }
.toc ol { margin: 0; padding-left: 1.4rem; }
.table-wrap { overflow-x: auto; margin: 1rem 0 1.4rem; border: 1px solid #d8dee4;
  border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; line-height: 1.45; }
caption { caption-side: top; text-align: left; padding: .5rem .75rem; color: #57606a;
  font-style: italic; }
th, td { padding: .45rem .75rem; text-align: left; vertical-align: top;
  border-bottom: 1px solid #e4e8ec; }
th { background: #eef1f4; font-weight: 600; border-bottom: 2px solid #cfd6dd; white-space: nowrap; }
tbody tr:nth-child(even) { background: #f8f9fb; }
tbody tr:hover { background: #eef5ff; }
tbody tr:last-child td { border-bottom: none; }
.num { text-align: right; white-space: nowrap; }
td { font-variant-numeric: tabular-nums; }
td.muted { color: #8c959f; }
figure { margin: 1.4rem 0 2rem; text-align: center; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e8ec; border-radius: 4px; }
figcaption { margin: .5rem auto 0; max-width: 46rem; font-size: .9rem; color: #57606a; }
@media print { .table-wrap { overflow: visible; } main { max-width: none; } }
"""


def _html_page(doc: Document) -> str:
    anchors = _Anchors()
    body = [f"<h1>{_html_inline(doc.title)}</h1>"]
    blocks = list(doc.blocks)
    # Banners first: the reader must see a warning before the contents and the numbers.
    lead = next((i for i, b in enumerate(blocks) if not isinstance(b, Banner)), len(blocks))
    body += [_html_block(b, anchors) for b in blocks[:lead]]
    body.append(_html_toc(doc))
    body += [_html_block(b, anchors) for b in blocks[lead:]]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_esc(plain_text(doc.title))}</title>\n<style>{_CSS}</style>\n</head>\n"
            "<body>\n<main>\n" + "\n".join(b for b in body if b) + "\n</main>\n</body>\n</html>\n")


def to_html(doc: Document, out_dir: Path) -> Path:
    """Write out_dir/report.html: one file, figures embedded, readable offline."""
    return write_atomic(Path(out_dir) / "report.html", _html_page(doc))
