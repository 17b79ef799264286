"""images/build's build order, read from the image folders' Dockerfiles (no engine needed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.harness import ROOT


def build_list(images: Path) -> list[str]:
    result = subprocess.run(
        [str(ROOT / "images" / "build"), "--list"],
        env={**os.environ, "DESKHUB_IMAGES_DIR": str(images)},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.splitlines()


def test_each_image_comes_after_the_one_it_is_from(tmp_path: Path) -> None:
    dockerfiles = {
        "base": "ARG BASE_IMAGE=debian:bookworm\nFROM ${BASE_IMAGE}\n",
        "mx": "ARG BASE=deskhub/base:latest\nFROM ${BASE}\n",
        "mx-gpu": "ARG BASE=deskhub/mx:latest\nFROM ${BASE}\n",
        "imaging": "FROM deskhub/base:latest\n",
        "another": "FROM debian:bookworm\n",
    }
    for name, text in dockerfiles.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "Dockerfile").write_text(text)
    (tmp_path / "notes").mkdir()  # no Dockerfile: not an image
    assert build_list(tmp_path) == [
        "0 base",  # first, though "another" sorts before it
        "0 another",
        "1 imaging (FROM deskhub/base)",
        "1 mx (FROM deskhub/base)",
        "2 mx-gpu (FROM deskhub/mx)",
    ]


def test_the_real_images_start_with_base() -> None:
    order = build_list(ROOT / "images")
    assert order[0] == "0 base"
    assert all(line.split()[0] != "0" for line in order[1:] if "(FROM deskhub/base)" in line)
