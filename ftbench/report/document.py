"""A report as a list of format-neutral blocks, rendered to Markdown and to HTML.

The report's content is composed once (ftbench.report.compose); each renderer only
decides how a block looks, so the Markdown and the HTML can never disagree on a number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str
    """Plain text; `code spans` in backticks and **bold** are allowed in both formats."""


@dataclass(frozen=True)
class Banner:
    """A warning the reader must see before trusting the tables (--limit, mixed data...)."""
    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    muted: set[tuple[int, int]] = field(default_factory=set)
    """(row, column) cells to show de-emphasised (non-significant gains)."""


@dataclass(frozen=True)
class Figure:
    png: Path
    """A PNG file already written; Markdown links it (beside report.md), HTML embeds it."""
    caption: str
    alt: str = ""


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Preformatted:
    text: str


@dataclass(frozen=True)
class Link:
    """A paragraph ending with a link to a file written beside the report (results.csv);
    the text is followed by a space and the link."""
    href: str
    text: str


Block = Union[Heading, Paragraph, Banner, Table, Figure, Bullets, Preformatted, Link]


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> "Document":
        self.blocks.extend(blocks)
        return self
