"""Reading a pull's event stream (the JSON lines a Docker 20.10 engine sends, as recorded)
into the words the spawn page and the pre-pull command print."""

from __future__ import annotations

import pytest

from deskhub.spawner.pulling import PullError, PullProgress, consume, megabytes, split_ref

MB = 1_000_000


def events_of_a_pull() -> list[dict]:
    return [
        {"status": "Pulling from deskhub/mx", "id": "latest"},
        {"status": "Already exists", "progressDetail": {}, "id": "aaa"},
        {"status": "Pulling fs layer", "progressDetail": {}, "id": "bbb"},
        {"status": "Pulling fs layer", "progressDetail": {}, "id": "ccc"},
        {"status": "Waiting", "progressDetail": {}, "id": "ccc"},
        {
            "status": "Downloading",
            "progressDetail": {"current": 200 * MB, "total": 800 * MB},
            "progress": "[====>      ]",
            "id": "bbb",
        },
        {
            "status": "Downloading",
            "progressDetail": {"current": 12 * MB, "total": 1030 * MB},
            "id": "ccc",
        },
    ]


def test_bytes_and_layers_so_far() -> None:
    progress = consume(events_of_a_pull(), PullProgress("deskhub/mx:latest"))
    assert progress.describe() == "212 of 1,830 MB (1 of 3 layers)"
    assert progress.fraction() == pytest.approx(212 / 1830)


def test_a_finished_pull_counts_every_byte_and_layer() -> None:
    events = events_of_a_pull() + [
        {"status": "Verifying Checksum", "progressDetail": {}, "id": "bbb"},
        {"status": "Download complete", "progressDetail": {}, "id": "bbb"},
        {"status": "Extracting", "progressDetail": {"current": 1, "total": 800 * MB}, "id": "bbb"},
        {"status": "Pull complete", "progressDetail": {}, "id": "bbb"},
        {"status": "Download complete", "progressDetail": {}, "id": "ccc"},
        {"status": "Pull complete", "progressDetail": {}, "id": "ccc"},
        {"status": "Digest: sha256:" + "e" * 64},
        {"status": "Status: Downloaded newer image for deskhub/mx:latest"},
    ]
    progress = consume(events, PullProgress("deskhub/mx:latest"))
    assert progress.describe() == "1,830 of 1,830 MB (3 of 3 layers)"
    assert progress.digest == "sha256:" + "e" * 64
    assert progress.fraction() == 1.0


def test_an_error_in_the_stream_raises_with_the_engines_words() -> None:
    events = [
        {"status": "Pulling from deskhub/mx", "id": "latest"},
        {
            "errorDetail": {"message": "manifest unknown"},
            "error": "manifest for deskhub/mx:latest not found: manifest unknown",
        },
    ]
    with pytest.raises(PullError, match="not found: manifest unknown"):
        consume(events, PullProgress("deskhub/mx:latest"))


def test_nothing_said_yet() -> None:
    assert PullProgress("x").describe() == ""
    assert PullProgress("x").fraction() == 0.0


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("deskhub/mx", ("deskhub/mx", "latest")),
        ("deskhub/mx:v1.2", ("deskhub/mx", "v1.2")),
        ("localhost:5000/deskhub/mx", ("localhost:5000/deskhub/mx", "latest")),
        ("10.0.0.1:5000/deskhub/mx:1-dirty", ("10.0.0.1:5000/deskhub/mx", "1-dirty")),
        ("deskhub/mx@sha256:" + "a" * 64, ("deskhub/mx", "sha256:" + "a" * 64)),
    ],
)
def test_split_ref(ref: str, expected: tuple[str, str]) -> None:
    assert split_ref(ref) == expected


def test_megabytes() -> None:
    assert megabytes(412 * MB, 1830 * MB) == "412 of 1,830 MB"
    assert megabytes(int(0.5 * MB), int(4.2 * MB)) == "0.5 of 4.2 MB"
