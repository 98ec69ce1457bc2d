"""The one frame-selection grammar (mvcap.frames)."""

import numpy as np
import pytest

from mvcap.errors import MvcapError
from mvcap.frames import FrameSelectionError, format_frames, parse_frames, select_frames


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("0:5", 10, [0, 1, 2, 3, 4]),
        (":3", 10, [0, 1, 2]),
        ("7:", 10, [7, 8, 9]),
        ("0:10:3", 10, [0, 3, 6, 9]),
        ("::4", 10, [0, 4, 8]),
        ("1::4", 10, [1, 5, 9]),
        ("8,2,5", 10, [2, 5, 8]),  # sorted
        ("0:3,2,9", 10, [0, 1, 2, 9]),  # unique
        ("0:2,5,6:10:2", 10, [0, 1, 5, 6, 8]),
        (" 3 , 4:6 ", 10, [3, 4, 5]),
        ("4", 10, [4]),
    ],
)
def test_grammar(text, n, expected):
    assert select_frames(text, n).tolist() == expected
    assert parse_frames(text).resolve(n).tolist() == expected


def test_blank_means_default_and_properties():
    assert parse_frames(None) is None and parse_frames("  ") is None and select_frames("", 5) is None
    assert parse_frames("3:").open_ended and not parse_frames("3:9").open_ended
    assert parse_frames("1,2").only_frames and not parse_frames("1,2:4").only_frames
    assert parse_frames("::5").step == 5 and parse_frames("1,2").step == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("a:b", r"START 'a' is not a frame number"),
        ("-1:4", r"START '-1' is not a frame number"),
        ("1.5", r"frame '1.5' is not a frame number"),
        ("0:4:0", r"STEP must be >= 1"),
        ("5:5", r"'5:5' is empty"),
        ("9:3", r"'9:3' is empty"),
        ("1,,2", r"empty item"),
        ("1:2:3:4", r"more than two ':'"),
    ],
)
def test_malformed_text_is_a_clear_error(text, message):
    with pytest.raises(FrameSelectionError, match=message):
        parse_frames(text)


def test_resolve_checks_the_frame_count():
    with pytest.raises(FrameSelectionError, match=r"'5:9' asks for frame\(s\) 5:9 but the session has 3 frames"):
        select_frames("5:9", 3)
    with pytest.raises(FrameSelectionError, match=r"asks for frame\(s\) 12 but take.h5 has 10 frames"):
        select_frames("0:2,12", 10, what="take.h5")
    with pytest.raises(FrameSelectionError, match="selects no frame"):
        select_frames("5:", 3)
    with pytest.raises(FrameSelectionError, match="needs a STOP"):
        parse_frames("5:").resolve(None)
    # check=False: the count only ends open ranges
    assert parse_frames("0:,7").resolve(3, check=False).tolist() == [0, 1, 2, 7]
    assert isinstance(FrameSelectionError("x"), MvcapError)


def test_library_forms_and_format_round_trip():
    assert select_frames(slice(2, None, 3), 10).tolist() == [2, 5, 8]
    assert select_frames(range(1, 4), 10).tolist() == [1, 2, 3]
    assert select_frames(np.array([4, 1, 4]), 10).tolist() == [1, 4]
    with pytest.raises(FrameSelectionError, match=">= 0"):
        select_frames([-1, 2], 10)
    with pytest.raises(FrameSelectionError, match="integers"):
        select_frames([0.5], 10)
    with pytest.raises(FrameSelectionError, match="no frames requested"):
        select_frames([], 10)
    idx = [0, 1, 2, 5, 7, 8, 9]
    assert format_frames(idx) == "0:3,5,7:10"
    assert select_frames(format_frames(idx), 10).tolist() == idx
