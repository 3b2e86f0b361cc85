"""mkdocs hook: scg's docstrings use Sphinx roles (:class:`Estimator`, :func:`~a.b.f`), which
Markdown renders as ':class:' followed by code. Keep the code, drop the role (and a leading
'~' with the module path, as Sphinx would)."""

import re

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):"
                  r"<code>(~(?:[\w.]*\.)?)?([^<]*)</code>")


def on_page_content(html, **kwargs):
    return ROLE.sub(lambda m: f"<code>{m.group(2)}</code>", html)
