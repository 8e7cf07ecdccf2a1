"""Where the supernet and each size live on the Hub: repository id check and the two layouts.

`layout="repos"`: the supernet in `org/name`, each size in its own repository `org/name-<size>`;
`layout="branches"`: one repository `org/name`, the supernet on `main` and each size on a branch `<size>`.
The cards written at export time and the push (`hf_dynasr.export.hub`) both use these names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

LAYOUTS = ("repos", "branches")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def is_repo_id(repo_id: str | None) -> bool:
    """Whether `repo_id` looks like a Hub model id `org/name`."""
    return bool(REPO_ID.match(repo_id or ""))


def check_layout(layout: str) -> None:
    """Raise ValueError unless `layout` is one of `LAYOUTS`."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'repos' (one repo per size) or 'branches' (one branch per size); "
                         f"got {layout!r}")


def size_references(repo_id: str, sizes: Iterable[str], layout: str = "repos") -> dict[str, tuple[str, str | None]]:
    """{size: (repo id, branch or None)}: `org/name-<size>` (repos layout) or `org/name` @ `<size>` (branches)."""
    check_layout(layout)
    if layout == "repos":
        return {s: (f"{repo_id}-{s}", None) for s in sizes}
    return {s: (repo_id, s) for s in sizes}


def format_reference(repo: str, revision: str | None) -> str:
    """How a card names a size's location: `org/name-40M`, or `org/name (revision="40M")` on a branch."""
    return repo if revision is None else f"{repo} (revision=\"{revision}\")"
