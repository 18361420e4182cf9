"""A search oracle that dies part way, for the resume tests."""


class Killed(Exception):
    """The process was killed here (raised by the oracle returned by `dying`)."""


def dying(oracle, at_call: int):
    """`oracle`, except that its `at_call`-th call raises Killed."""
    calls = {"n": 0}

    def dying_oracle(archs):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise Killed
        return oracle(archs)

    return dying_oracle
