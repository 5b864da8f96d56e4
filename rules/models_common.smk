# Checkpoint config and input functions (no rules); the rules are in rules/models.smk.

WEIGHTS_DIR = config.get("weights", {}).get("dir", "resources/models")
WEIGHTS_HUB = config.get("weights", {}).get("hub", {})


def weights_input(path):
    """The downloaded checkpoint directory that holds `path` (a directory of weights.hub, or a file or subfolder of
    one) as an input, so the models rule fetches it first; nothing for other paths."""
    rel = Path(os.path.normpath(path))
    for name in WEIGHTS_HUB:
        top = Path(os.path.normpath(f"{WEIGHTS_DIR}/{name}"))
        if rel == top or top in rel.parents:
            return [str(top)]
    return []


wildcard_constraints:
    weights="|".join(map(re.escape, WEIGHTS_HUB)) or "NONE",
