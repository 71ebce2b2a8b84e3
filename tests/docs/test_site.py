"""The docs site builds offline and strict, every page is in its nav, and the README stays short.

The site is for machines with no network: a page that pulled a font, a script or a stylesheet
from another host would render wrong (or leak who reads it) on a site's closed network.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXTERNAL = re.compile(r"^(https?:)?//", re.IGNORECASE)
# url(...) and @import "..." in CSS; the quotes are optional in url().
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)|@import\s+['"]([^'"]+)""", re.IGNORECASE)
MD_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict"]
    result = subprocess.run(
        [*command, "-f", str(REPO / "mkdocs.yml"), "-d", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-4000:]}"
    return out


class _Assets(HTMLParser):
    """The URLs a page loads by itself: scripts, linked stylesheets/icons/fonts, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {"script": "src", "link": "href", "img": "src", "source": "src"}
        values = dict(attrs)
        if tag in names and values.get(names[tag]):
            self.urls.append(values[names[tag]])
        if tag == "style" or values.get("style"):
            self.urls += _css_urls(values.get("style") or "")


def _css_urls(css: str) -> list[str]:
    return [a or b for a, b in CSS_URL.findall(css)]


def test_the_site_builds_strict_with_every_page(site):
    pages = sorted(p.relative_to(REPO / "docs") for p in (REPO / "docs").rglob("*.md"))
    for page in pages:
        built = site / page.with_suffix("") / "index.html"
        if page.name == "index.md":
            built = site / page.parent / "index.html"
        assert built.is_file(), f"{page} was not built"


def test_no_page_loads_anything_from_another_host(site):
    offending = []
    for html in site.rglob("*.html"):
        parser = _Assets()
        parser.feed(html.read_text(encoding="utf-8"))
        offending += [f"{html.relative_to(site)}: {u}" for u in parser.urls if EXTERNAL.match(u)]
    for css in site.rglob("*.css"):
        urls = _css_urls(css.read_text(encoding="utf-8"))
        offending += [f"{css.relative_to(site)}: {u}" for u in urls if EXTERNAL.match(u)]
    assert offending == []


def _nav_pages(nav) -> set[str]:
    pages: set[str] = set()
    for item in nav:
        value = item if isinstance(item, str) else next(iter(item.values()))
        if isinstance(value, list):
            pages |= _nav_pages(value)
        else:
            pages.add(value)
    return pages


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = _nav_pages(config["nav"])
    pages = {p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md")}
    assert sorted(pages - nav) == [], "pages missing from mkdocs.yml's nav"
    assert sorted(nav - pages) == [], "nav entries with no page"
    # Offline: no web fonts (Material's default pulls Google Fonts).
    assert config["theme"]["font"] is False


def test_the_readme_is_short_and_its_links_resolve():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    broken = []
    for target in MD_LINK.findall(readme):
        if EXTERNAL.match(target) or target.startswith(("#", "mailto:")):
            continue
        path = target.split("#", 1)[0]
        if not (REPO / path).is_file():
            broken.append(target)
    assert broken == []
    # The README points into the site, and at the cluster page moved there from docs/.
    assert "docs/deploy/cluster.md" in readme
    assert "docs/getting-started.md" in readme
