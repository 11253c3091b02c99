"""pytest-xdist: every stage of one spec runs on one worker, in order, whatever ``--dist`` says, so a
stage is skipped when its prerequisite failed instead of running blind on another worker.

``--dist load`` and ``worksteal`` (the default with ``-n``) hand out single tests; they are replaced by
a scheduler that keeps the spec's stages together as one unit and hands out every other test alone.
``loadfile``, ``loadscope`` and ``loadgroup`` already keep the spec's stages together.
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

SPLITTING_MODES = ("load", "worksteal")


class SpecOnOneWorker(LoadScopeScheduling):
    """LoadScope scheduling where a spec's stage items form one scope and every other test is its own."""

    def __init__(self, config, log=None, spec_nodeid: str = ""):
        super().__init__(config, log)
        self.spec_prefix = spec_nodeid + "::"

    def _split_scope(self, nodeid: str) -> str:
        return self.spec_prefix if nodeid.startswith(self.spec_prefix) else nodeid


def make_scheduler(config, log, spec_nodeid: str):
    if config.getvalue("dist") not in SPLITTING_MODES:
        return None
    return SpecOnOneWorker(config, log, spec_nodeid)
