"""Installs the subnet package (`template`) and the hivemind helpers (`hivemind_utils`)."""

from pathlib import Path

from setuptools import find_packages, setup


def requirements() -> list[str]:
    lines = Path(__file__).with_name("requirements.txt").read_text().splitlines()
    reqs = [line.split("#", 1)[0].strip() for line in lines]
    return [r for r in reqs if r]


setup(
    name="distributed_training",
    version="0.1.0",
    description="Bittensor subnet: miners jointly train one GPT-2 model on FineWeb with hivemind",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(
        include=["template", "template.*", "hivemind_utils", "hivemind_utils.*"]),
    install_requires=requirements(),
    # The programs `python neurons/miner.py`, `neurons/validator.py`, `scripts/inspect_dht.py` run.
    entry_points={
        "console_scripts": [
            "subnet-miner=template.cli:miner",
            "subnet-validator=template.cli:validator",
            "subnet-inspect=template.inspect_dht:main",
        ],
    },
    license="MIT",
)
