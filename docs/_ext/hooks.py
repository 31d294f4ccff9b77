"""MkDocs hooks of the documentation site (``hooks:`` in mkdocs.yml; ``exclude_docs`` keeps this file out of it)."""

from __future__ import annotations

import os


def on_config(config, **kwargs):
    # Tutorials executed during the build (REVINTERP_DOCS_EXECUTE=true) display plotly figures through plotly's
    # "notebook" renderer, which inlines plotly.js into the page: the figures then render offline. The default
    # mimetype renderer gives JSON that nbconvert cannot show. The kernels inherit this environment.
    os.environ.setdefault("PLOTLY_RENDERER", "notebook")
    return config
