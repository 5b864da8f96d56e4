# Every recipe a training job of this config will read, checked at DAG start (config cross-references are
# checked in rules/common.smk, right after the schema).


def recipe_checks():
    """(label, load) for every recipe a training job of this config will read, with the overrides it gets: keys,
    types (coerced as the job coerces them), TRL trainer arguments, scheduler and reward names."""
    from vqinsight.baselines.sft import SFTRecipe
    from vqinsight.dpo.train import Recipe as DPORecipe
    from vqinsight.grpo.reward_funcs import build_reward_funcs
    from vqinsight.grpo.train import Recipe as GRPORecipe

    def grpo(path, over=None):
        def load():
            recipe = GRPORecipe.load(path, over)
            try:
                build_reward_funcs(recipe.rewards)
            except ValueError as e:
                raise ConfigError(f"{path}: rewards: {e}") from None

        return load

    checks = [("grpo.stage1.recipe", grpo(STAGE1_RECIPE))]
    for tm, spec in GRPO["stage2"]["task_models"].items():
        variants = {"full": {}} | {v: a for v, a in ABLATIONS.items() if tm in a["task_models"]}
        for v, a in variants.items():
            over = _merged(spec.get("recipe", {}), a.get("recipe", {}))
            checks.append((f"grpo.stage2.recipe for {tm}/{v}", grpo(STAGE2_RECIPE, over)))
    for name, spec in BASELINES.items():
        if spec["type"] == "sft":
            checks.append((f"eval.baselines.{name}.recipe", lambda p=repo_file(spec["recipe"]): SFTRecipe.load(p)))
    s3 = config.get("stage3")
    if s3:
        tm = GRPO["stage2"]["task_models"][s3["judge"]["task_model"]]
        over = _merged(tm.get("recipe", {}), s3["refine"].get("recipe", {}))
        checks.append(("stage3.refine.recipe", grpo(STAGE2_RECIPE, over)))
        checks.append(("stage3.dpo.recipe", lambda: DPORecipe.load(repo_file(s3["dpo"]["recipe"]))))
    return checks


_problems = recipe_problems(recipe_checks())
if _problems:
    raise ConfigError(f"invalid recipe(s) of {config_source()}:\n  " + "\n  ".join(_problems))
