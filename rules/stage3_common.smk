# Stage 3 config, ids and input functions (no rules); the rules are in rules/stage3.smk.

S3 = config["stage3"]
S3DIR = f"{RESULTS}/stage3"
ROUNDS = int(S3["rounds"])
S3_GPUS = int(S3.get("gpus", 0))
S3_JUDGE_TM = S3["judge"]["task_model"]
S3_FINAL_JUDGE = f"united_r{ROUNDS}"
S3_TINY = "tiny" in S3["generator"]
S3_PAIRING = S3.get("pairing", "round_robin")  # the schema's enum: round_robin (all C(N,2) pairs) or tournament
DPO_RECIPE = repo_file(S3["dpo"]["recipe"])
S3_CODE = [str(SRC / "stage3" / f) for f in ("pairs.py", "index.py", "selection.py", "vbench.py", "evaluate.py")]


def gen_id(chain, r):
    """Generator after round r of a chain; round 1 is shared by both chains."""
    return "g0" if r == 0 else ("united_r1" if r == 1 else f"{chain}_r{r}")


def judge_id(chain, r):
    """The judge that builds round r's preference set: J_0 in round 1 and in the no_uf chain, else J_{r-1}."""
    return "j0" if (r == 1 or chain == "no_uf") else f"united_r{r - 1}"


def parse_gen(gen):
    chain, r = gen.rsplit("_r", 1)
    return chain, int(r)


def gen_round(gen):
    return 0 if gen in ("g0", "videodpo") else parse_gen(gen)[1]


def judge_path(jid):
    if jid == "j0":
        return f"{RESULTS}/grpo/stage2/{S3_JUDGE_TM}/full/model"
    return f"{S3DIR}/judges/{jid}/model"


def generator_path(gid):
    return f"{S3DIR}/generators/{gid}"


VBENCH = S3.get("vbench", {"mode": "demo"})
S3_SHARDS = {
    "train": int(S3.get("shards", 1)),
    "heldout": int(S3.get("heldout_shards", S3.get("shards", 1))),
    "vbench": int(VBENCH.get("shards", 1)),
}
# VBench's standard suite is read with 5 videos per prompt (indices 0..4)
S3_N = {"train": int(S3["samples_per_prompt"]), "heldout": int(S3["heldout_samples"]), "vbench": 5}


def sample_indexes(gen, split):
    return [f"{S3DIR}/samples/{gen}/{split}/shard{k}/index.jsonl" for k in range(S3_SHARDS[split])]


# Table 6 rows -> generator: G_0, VideoDPO (if its pairs are configured), w/o UF, every round of the united chain
TABLE6_GENS = {"t2v_turbo": "g0"}
if S3.get("videodpo"):
    TABLE6_GENS["videodpo"] = "videodpo"
TABLE6_GENS["ours_no_uf"] = gen_id("no_uf", ROUNDS)
TABLE6_GENS |= {f"ours_r{r}": gen_id("united", r) for r in range(1, ROUNDS)}
TABLE6_GENS["ours"] = gen_id("united", ROUNDS)


def stage3_eval_files(wildcards=None):
    return [f"{S3DIR}/eval/{g}.json" for g in dict.fromkeys(TABLE6_GENS.values())]


wildcard_constraints:
    gen="g0|videodpo|(united|no_uf)_r[0-9]+",
    dpo_gen="videodpo|(united|no_uf)_r[0-9]+",
    judge="j0|united_r[0-9]+",
    split="train|heldout|vbench",
    shard="[0-9]+",
    r="[0-9]+",


S3_REFINE_DATASETS = S3["refine"].get("datasets", GRPO["stage2"]["task_models"][S3_JUDGE_TM]["datasets"])


def s3_judge_args(wildcards=None):
    j = EVAL["judge"] | S3["judge"]
    return (
        f"--task comparison --split all --format vqinsight {judge_setting_args(j)}"
        f"--seed {config['seed']}{judge_engine_args(j)}"
    )


def s3_samples_judge_args(wildcards=None):
    """s3_judge_args for a generator's samples: with pairing tournament, only each prompt's tournament pairs, judged
    round by round (--tournament); the round robin's command is s3_judge_args unchanged."""
    return s3_judge_args() + (" --tournament" if S3_PAIRING == "tournament" else "")


def dpo_inputs(wildcards):
    """G_{r-1} and the preference set C_r of this chain's round r (or VideoDPO's released pairs)."""
    if wildcards.dpo_gen == "videodpo":
        return {"model": generator_path("g0"), "pairs": []}
    chain, r = parse_gen(wildcards.dpo_gen)
    prev = gen_id(chain, r - 1)
    return {"model": generator_path(prev), "pairs": f"{S3DIR}/pairs/{judge_id(chain, r)}/{prev}.jsonl"}


def dpo_launcher(wildcards, resources):
    if resources.gpu == 0:
        return "python -m vqinsight.dpo.train"
    accelerate = repo_file(S3["dpo"].get("accelerate", GRPO["accelerate"]))
    return f"accelerate launch --config_file {shlex.quote(accelerate)} --num_processes {resources.gpu} -m vqinsight.dpo.train"


def refine_inputs(wildcards):
    r = int(wildcards.r)
    prev_gen, new_gen, jid = gen_id("united", r - 1), gen_id("united", r), judge_id("united", r)
    return {
        "pairs": f"{S3DIR}/pairs/{jid}/{prev_gen}.jsonl",
        "index": sample_indexes(new_gen, "train"),
        "predictions": f"{S3DIR}/judged/{jid}/{new_gen}/train.jsonl",
    }


def refine_override(wildcards):
    spec = GRPO["stage2"]["task_models"][S3_JUDGE_TM]
    over = _merged(spec.get("recipe", {}), S3["refine"].get("recipe", {}))
    return f"--recipe-override {shlex.quote(json.dumps(over, sort_keys=True))}" if over else ""


def winrate_input(wildcards):
    """The final judge's verdicts of G vs G_0 on held-out prompts (none for G_0 itself)."""
    return [] if wildcards.gen == "g0" else [f"{S3DIR}/eval/winrate/{wildcards.gen}.jsonl"]
