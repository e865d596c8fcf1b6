"""Serve every script the website needs from the site itself: no request leaves it.

Jupyter Book 1 loads require.js, the ipywidgets embed manager and MathJax from public CDNs by
default, and plotly figures need plotly.js. This Sphinx extension fetches pinned npm packages
from the npm registry once (verifying their published sha512 integrity), keeps the files the
site needs in ``.vendor/site`` (git-ignored, so no third-party bundle is committed), copies
plotly.js from the installed plotly Python package, and points Sphinx and myst-nb at the local
copies. plotly.js is loaded once per site, before require.js: loaded after it, plotly.js would
register itself as an AMD module instead of defining ``window.Plotly``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import tarfile
import urllib.request
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.util import logging

logger = logging.getLogger(__name__)

REGISTRY = "https://registry.npmjs.org"

# package -> (version, sha512 integrity published by the registry, {path in the tarball: path on the site})
PACKAGES: dict[str, tuple[str, str, dict[str, str]]] = {
    "requirejs": (
        "2.3.8",
        "sha512-7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce5SXP17c+Jd5otXKGNehIonFlyQXSowL6Mw==",
        {"package/require.js": "vendor/require.js"},
    ),
    "@jupyter-widgets/html-manager": (
        "1.0.6",
        "sha512-+Mn+Ra8wyIHrYaUpfmf9A3dsLkt/NuwzPQN8sthdxBD35VV5cOJbpmgMhNR27n/rmP3mKyEe0PWCJrtZrXTXDQ==",
        {"package/dist/": "vendor/widgets/"},
    ),
    "mathjax": (
        "3.2.2",
        "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
        {
            "package/es5/tex-chtml.js": "vendor/mathjax/tex-chtml.js",
            "package/es5/input/tex/extensions/": "vendor/mathjax/input/tex/extensions/",
            "package/es5/output/chtml/fonts/woff-v2/": "vendor/mathjax/output/chtml/fonts/woff-v2/",
            "package/es5/a11y/": "vendor/mathjax/a11y/",
            "package/es5/ui/": "vendor/mathjax/ui/",
            "package/es5/sre/": "vendor/mathjax/sre/",
        },
    ),
}

# Files of a copied folder that the site does not need (source maps, the non-AMD widget bundle).
SKIP_SUFFIXES = (".map", ".LICENSE.txt", ".d.ts")
SKIP_NAMES = ("embed.js", "libembed-amd.js", "106.embed.js", "330.embed.js")


# Loaded before require.js and MathJax. (1) Tells require.js where the widget bundle lives, so the
# fonts it loads come from the site and not from a path relative to each page. (2) The widget
# manager typesets labels with MathJax 2's API (MathJax.Hub.Queue), which MathJax 3 lacks; give
# every object assigned to window.MathJax a Hub.Queue that calls MathJax 3's typesetter.
SHIMS = """\
var require = {paths: {'@jupyter-widgets/html-manager/dist':
  document.documentElement.dataset.content_root + '_static/vendor/widgets'}};
(function () {
  var current;
  function withHub(mj) {
    if (mj && typeof mj === 'object' && !mj.Hub) {
      Object.defineProperty(mj, 'Hub', {enumerable: false, value: {Queue: function () {
        if (window.MathJax && window.MathJax.typesetPromise) { window.MathJax.typesetPromise(); }
      }}});
    }
    return mj;
  }
  Object.defineProperty(window, 'MathJax', {configurable: true,
    get: function () { return current; }, set: function (v) { current = withHub(v); }});
})();
"""


def _stamp() -> str:
    return "\n".join(f"{name}@{version}" for name, (version, _, _) in sorted(PACKAGES.items()))


def _fetch(name: str, version: str, integrity: str) -> bytes:
    unscoped = name.split("/")[-1]
    url = f"{REGISTRY}/{name}/-/{unscoped}-{version}.tgz"
    logger.info(f"offline_assets: fetching {url}")
    with urllib.request.urlopen(url, timeout=120) as response:
        data = response.read()
    algorithm, _, expected = integrity.partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if actual != expected:
        raise RuntimeError(f"{name}@{version}: integrity mismatch (expected {integrity}, got {algorithm}-{actual})")
    return data


def _extract(data: bytes, mapping: dict[str, str], site: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            for source, target in mapping.items():
                if source.endswith("/") and member.name.startswith(source):
                    rest = member.name[len(source) :]
                    if rest.endswith(SKIP_SUFFIXES) or rest in SKIP_NAMES:
                        continue
                    dest = site / target / rest
                elif member.name == source:
                    dest = site / target
                else:
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as f:  # type: ignore[union-attr]
                    dest.write_bytes(f.read())


def ensure_assets(root: Path) -> Path:
    """Make ``root/.vendor/site`` hold every pinned asset (fetching only what is missing)."""
    vendor = root / ".vendor"
    site = vendor / "site"
    stamp_file = vendor / "stamp.txt"
    if not (stamp_file.exists() and stamp_file.read_text() == _stamp()):
        shutil.rmtree(site, ignore_errors=True)
        for name, (version, integrity, mapping) in PACKAGES.items():
            _extract(_fetch(name, version, integrity), mapping, site)
        stamp_file.write_text(_stamp())
    (site / "vendor" / "site-shims.js").write_text(SHIMS)
    import plotly

    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    target = site / "vendor" / "plotly.min.js"
    if not target.exists() or target.stat().st_size != plotly_js.stat().st_size:
        shutil.copyfile(plotly_js, target)
    return site


def _configure(app: Sphinx, config: Config) -> None:
    site = ensure_assets(Path(app.srcdir))
    config.html_static_path = [*config.html_static_path, str(site)]
    config.mathjax_path = "vendor/mathjax/tex-chtml.js"
    config.nb_ipywidgets_js = {
        "vendor/require.js": {},
        # Core widgets are bundled in embed-amd.js; point any other module lookup at the site too.
        "vendor/widgets/embed-amd.js": {"data-jupyter-widgets-cdn": "_static/vendor/widgets/"},
    }
    config.html_js_files = [
        *config.html_js_files,
        ("vendor/plotly.min.js", {"priority": 200}),
        ("vendor/site-shims.js", {"priority": 210}),
    ]


def _drop_thebe(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: object) -> None:
    """Remove sphinx-thebe's scripts: live kernels are off (thebe: false), and Jupyter Book adds
    them twice, which raises a redeclaration error in the browser and names a CDN."""
    scripts = context.get("script_files", [])
    context["script_files"] = [
        js for js in scripts
        if "thebe" not in str(getattr(js, "filename", js) or "")
        and "THEBE_JS_URL" not in str(getattr(js, "attributes", {}).get("body", ""))
    ]


def _drop_unused_plotly(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: object) -> None:
    """Load plotly.js (about 4.6 MB) only on pages that draw a plotly figure: the intro, the
    appendices and the search page have none, and a first visit to them should not pay for it."""
    if "Plotly.newPlot" in str(context.get("body", "")):
        return
    context["script_files"] = [
        js for js in context.get("script_files", []) if "plotly.min.js" not in str(getattr(js, "filename", js) or "")
    ]


def setup(app: Sphinx) -> dict[str, object]:
    app.connect("config-inited", _configure, priority=100)
    app.connect("html-page-context", _drop_thebe)
    app.connect("html-page-context", _drop_unused_plotly)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
