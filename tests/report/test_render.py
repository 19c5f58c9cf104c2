"""Markdown and HTML renderings of one Document: well-formed, self-contained, escaped, and
saying the same things."""

import base64
import re
from html.parser import HTMLParser

import pytest

from ftbench.report.document import (Banner, Bullets, Document, Figure, Heading, Paragraph,
                                     Preformatted, Table)
from ftbench.report.render import numeric_columns, plain_text, to_html, to_markdown

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


def tiny_png(path, payload=b""):
    """A file that passes for a PNG (signature + bytes); the renderers never decode it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PNG_SIGNATURE + b"\x00\x00\x00\rIHDR" + payload)
    return path


@pytest.fixture
def doc(tmp_path):
    gains = tiny_png(tmp_path / "src" / "gains.png", b"gains")
    curves = tiny_png(tmp_path / "elsewhere" / "curves.png", b"curves")
    return Document("ftbench report: `s0`", [
        Banner("SMOKE: first 20 docs (--limit 20); **not** comparable"),
        Heading("Main comparison"),
        Paragraph("Scores in %. See `models/<run>/pair.yaml`; the paper is **not this run**."),
        Table(["suite", "benchmark", "baseline", "free-k0p5"],
              [["math", "gsm8k", "30.0", "50.0 (+20.0 pts, +66.7 %) (n.s.)"],
               ["qa", "<script>alert('x')</script>", "—", "12.5"],
               ["code", "a | b with `x|y`", "40.0", "n/a"]],
              caption="Scores in %", muted={(0, 3)}),
        Figure(gains, "Relative gains, **faded** = n.s.", alt="relative gains"),
        Heading("Training"),
        Figure(curves, "Training curves"),
        Bullets(["`s0/baseline/gsm8k`: n=20", "plain & simple"]),
        Preformatted("run:\n  steps: 50  # ```fence```\n"),
    ])


class Checker(HTMLParser):
    """Every non-void tag closes in order; collects <img> sources and linked URLs."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.images, self.urls, self.text, self.ids = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        for key in ("href", "src"):
            if key in attrs:
                self.urls.append(attrs[key])
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(html):
    p = Checker()
    p.feed(html)
    p.close()
    assert p.stack == [], f"unclosed tags: {p.stack}"
    return p


def test_html_is_well_formed_and_self_contained(doc, tmp_path):
    out = to_html(doc, tmp_path / "out")
    assert out == tmp_path / "out" / "report.html"
    html = out.read_text()
    p = parse(html)
    figures = [b for b in doc.blocks if isinstance(b, Figure)]
    assert len(p.images) == len(figures) == 2
    for img, fig in zip(p.images, figures):
        assert img["src"].startswith("data:image/png;base64,")
        data = base64.b64decode(img["src"].split(",", 1)[1], validate=True)
        assert data.startswith(PNG_SIGNATURE) and data == fig.png.read_bytes()
    assert img["alt"] == "Training curves"  # the caption stands in for a missing alt
    assert not re.search(r"https?://", html) and "<script" not in html
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert not list((tmp_path / "out").glob(".*.tmp")), "a temporary file was left behind"


def test_html_escapes_user_text(doc, tmp_path):
    html = to_html(doc, tmp_path).read_text()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "<code>models/&lt;run&gt;/pair.yaml</code>" in html
    assert "plain &amp; simple" in html
    text = "".join(parse(html).text)
    assert "<script>alert('x')</script>" in text  # shown as text, never run


def test_html_structure(doc, tmp_path):
    html = to_html(doc, tmp_path).read_text()
    p = parse(html)
    assert "<title>ftbench report: s0</title>" in html
    assert '<div class="banner" role="alert">' in html and "<strong>not</strong>" in html
    # The banner comes before the contents, the contents before the first section.
    assert html.index('class="banner"') < html.index('class="toc"') < html.index("<h2")
    assert [u for u in p.urls if u.startswith("#")] == ["#main-comparison", "#training"]
    assert {"main-comparison", "training"} <= set(p.ids)
    assert '<td class="num muted">' not in html  # column 3 is composite, not numeric
    assert re.search(r'<td class="muted">50\.0 \(\+20\.0 pts', html)
    assert '<td class="num">30.0</td>' in html and '<th class="num">baseline</th>' in html
    assert '<div class="table-wrap">' in html and "<caption>Scores in %</caption>" in html
    assert "<figcaption>Relative gains, <strong>faded</strong> = n.s.</figcaption>" in html
    assert "<pre><code>run:\n  steps: 50  # ```fence```</code></pre>" in html


def test_markdown(doc, tmp_path):
    out_dir = tmp_path / "out"
    md = to_markdown(doc, out_dir).read_text()
    assert md.startswith("# ftbench report: `s0`\n")
    assert "> **\u26a0 SMOKE: first 20 docs (--limit 20); not comparable**" in md
    assert "See `models/<run>/pair.yaml`; the paper is **not this run**." in md
    assert "| suite | benchmark | baseline | free-k0p5 |\n|---|---|---:|---|" in md
    assert "| math | gsm8k | 30.0 | *50.0 (+20.0 pts, +66.7 %) (n.s.)* |" in md
    assert "| qa | \\<script>alert('x')\\</script> | — | 12.5 |" in md
    assert "| code | a \\| b with `x\\|y` | 40.0 | n/a |" in md
    assert "![relative gains](figures/gains.png)\n\n*Relative gains, **faded** = n.s.*" in md
    assert "![Training curves](figures/curves.png)" in md
    assert "- `s0/baseline/gsm8k`: n=20" in md
    assert "````text\nrun:\n  steps: 50  # ```fence```\n````" in md
    for fig in (b for b in doc.blocks if isinstance(b, Figure)):
        copy = out_dir / "figures" / fig.png.name
        assert copy.read_bytes() == fig.png.read_bytes()
    # Every row of the table has the header's number of cells (escaped pipes excepted).
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 4
    assert {len(re.split(r"(?<!\\)\|", r)) for r in rows} == {6}


def test_markdown_keeps_figures_already_in_place_and_separates_namesakes(tmp_path):
    out_dir = tmp_path / "out"
    in_place = tiny_png(out_dir / "figures" / "plot.png", b"one")
    other = tiny_png(tmp_path / "other" / "plot.png", b"two")
    doc = Document("t", [Figure(in_place, "first"), Figure(other, "second")])
    md = to_markdown(doc, out_dir).read_text()
    assert "](figures/plot.png)" in md and "](figures/plot-2.png)" in md
    assert (out_dir / "figures" / "plot.png").read_bytes() == in_place.read_bytes()
    assert (out_dir / "figures" / "plot-2.png").read_bytes() == other.read_bytes()
    assert sorted(p.name for p in (out_dir / "figures").iterdir()) == ["plot-2.png", "plot.png"]


def test_inline_markup_reads_the_same_in_both(tmp_path):
    doc = Document("t", [Paragraph("a **b `c`** and `**d**` but 2 ** 3 and `open"),
                         Heading("C#"), Paragraph("# not a heading\n- not a list\n1. no")])
    md = to_markdown(doc, tmp_path).read_text()
    html = to_html(doc, tmp_path).read_text()
    assert "a **b `c`** and `**d**` but 2 \\*\\* 3 and \\`open" in md
    assert "a <strong>b <code>c</code></strong> and <code>**d**</code> but 2 ** 3 and `open" \
        in html
    assert "## C\\#" in md
    assert "\\# not a heading\n\\- not a list\n1\\. no" in md


def test_line_breaks_keep_markup_in_both(tmp_path):
    doc = Document("t", [Paragraph("**bold\n  across** lines"),
                         Table(["h"], [["`a` first\n**b** second"]])])
    md = to_markdown(doc, tmp_path).read_text()
    html = to_html(doc, tmp_path).read_text()
    assert "**bold\nacross** lines" in md and "<strong>bold\nacross</strong> lines" in html
    assert "| `a` first<br>**b** second |" in md
    assert "<td><code>a</code> first<br>\n<strong>b</strong> second</td>" in html
    assert plain_text("a **b `c`**") == "a b c"


def test_numeric_columns():
    t = Table(["a", "b", "c", "d", "e"],
              [["x", "1.0", "+6.1 %", "1.250x (1,000 tok/s → 800 tok/s)", "—"],
               ["y", "n/a", "55.0 ± 7.1", "not measured", ""]])
    assert numeric_columns(t) == {1, 2}


def test_missing_or_non_png_figure_is_a_clear_error(tmp_path):
    missing = Document("t", [Figure(tmp_path / "nope.png", "x")])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        to_html(missing, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        to_markdown(missing, tmp_path / "out")
    (tmp_path / "fake.png").write_text("not a png")
    with pytest.raises(ValueError, match="not a PNG"):
        to_html(Document("t", [Figure(tmp_path / "fake.png", "x")]), tmp_path / "out")
    assert not (tmp_path / "out" / "report.html").exists()


def test_rendering_overwrites_a_previous_report(doc, tmp_path):
    (tmp_path / "report.html").write_text("old")
    (tmp_path / "report.md").write_text("old")
    assert to_html(doc, tmp_path).read_text().startswith("<!DOCTYPE html>")
    assert to_markdown(doc, tmp_path).read_text().startswith("# ftbench report")
    assert (tmp_path / "report.html").stat().st_mode & 0o444 == 0o444
