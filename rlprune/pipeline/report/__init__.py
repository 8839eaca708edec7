"""The run report, rendered from one list of blocks to ``report.md`` and a self-contained ``report.html``.

:mod:`.document` renders blocks and writes both files; :mod:`.figures` draws the figures every report shares;
:mod:`.single` builds the report of a run with one target, :mod:`.multi_target` that of a run with several.
"""
