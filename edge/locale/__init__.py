"""The gettext catalogues of what a verdict says (edge.qc.words): <lang>/LC_MESSAGES/edge-qc.po, its
compiled .mo beside it, and the template edge-qc.pot. Data only; `python -m tools.i18n` keeps them."""
