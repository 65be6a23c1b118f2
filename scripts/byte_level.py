"""GPT-2's byte-level alphabet, shared by the fixture scripts (no dependencies)."""


def bytes_to_unicode():
    """GPT-2's byte -> character table (openai/gpt-2 src/encoder.py), in GPT-2's token order:
    returns the bytes and their characters, in the same order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return bs, [chr(c) for c in cs]
