from splitgpt.core.stop_strings import StopMatcher


def run(stops, pieces):
    m = StopMatcher(stops)
    out = "".join(m.push(p) for p in pieces) + m.flush()
    return out, m.stopped


def test_stop_string_split_over_pieces_is_cut_and_not_emitted():
    assert run(["\n\n", "END"], ["Hello E", "N", "d wor", "ld\n", "\nmore"]) == ("Hello ENd world", True)


def test_a_held_prefix_that_never_completes_is_released():
    assert run(["END"], ["ab E", "N"]) == ("ab EN", False)


def test_earliest_stop_wins():
    assert run(["c", "b"], ["abcd"]) == ("a", True)


def test_no_stops_passes_everything():
    assert run([], ["a", "b"]) == ("ab", False)
