"""docs/scaling.md stays copy-pasteable: every igcli command in it parses, the SLURM script is valid
bash, and the Kubernetes manifest is an indexed Job whose shards match its completions."""
import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from igcli.cli.commands import explain_command as explain

from .conftest import REPO

DOC = (REPO / "docs" / "scaling.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.S)


def igcli_commands() -> list[list[str]]:
    text = "\n".join(blocks("bash") + [yaml.safe_load(blocks("yaml")[0])["spec"]["template"]["spec"]
                                       ["containers"][0]["args"][0]])
    text = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("igcli explain"):
            line = re.sub(r"\$\{\w+\}", "3", line.split(" #")[0].split(";")[0].rstrip(" &"))
            commands.append(shlex.split(line)[2:])
    return commands


def test_every_igcli_command_in_the_scaling_doc_parses():
    commands = igcli_commands()
    assert len(commands) >= 10
    for arguments in commands:
        explain.make_context("explain", list(arguments))  # raises on an option igcli does not have


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_slurm_script_is_valid_bash():
    script = next(block for block in blocks("bash") if block.startswith("#!/bin/bash"))
    assert "#SBATCH --array=" in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_the_kubernetes_manifest_is_an_indexed_job_with_one_shard_per_completion():
    job = yaml.safe_load(blocks("yaml")[0])
    assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
    completions = job["spec"]["completions"]
    assert f"--shard ${{JOB_COMPLETION_INDEX}}/{completions}" in job["spec"]["template"]["spec"]["containers"][0]["args"][0]
