#!/usr/bin/env python3
"""Generate core/src/unicode_data.c: the character classes the BPE
pre-tokenizers need (letter, number, punctuation, symbol, mark, separator,
control, whitespace), as a table of code point ranges.

Usage (Debian's unicode-data package provides the files):

    python3 core/src/gen_unicode.py /usr/share/unicode > core/src/unicode_data.c

The classes are those llama.cpp derives from the same files: the general
category (UnicodeData.txt, field 2) grouped by its first letter, with
unassigned code points (Cn) in no class, and whitespace from the
White_Space property (PropList.txt).  The output is committed, so building
nibble never needs this script or the data files.
"""
import os
import re
import sys

LETTER, NUMBER, PUNCT, SYMBOL, MARK, SEPARATOR, CONTROL, SPACE = (1 << i for i in range(8))
GROUP = {"L": LETTER, "N": NUMBER, "P": PUNCT, "S": SYMBOL, "M": MARK, "Z": SEPARATOR,
         "C": CONTROL}
MAX_CP = 0x110000


def version_of(path):
    with open(path, encoding="utf-8") as f:
        m = re.match(r"#\s*\S+-(\d+\.\d+\.\d+)\.txt", f.readline())
    if not m:
        sys.exit(f"{path}: no version in the first line")
    return m.group(1)


def categories(path):
    """flags[cp] from the general categories; Cn (unassigned) stays 0."""
    flags = bytearray(MAX_CP)
    first = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split(";")
            if len(fields) != 15:
                sys.exit(f"{path}: malformed line: {line!r}")
            cp, name, cat = int(fields[0], 16), fields[1], fields[2]
            if cat == "Cn" or cat[0] not in GROUP:
                sys.exit(f"{path}: unexpected category {cat} at U+{cp:04X}")
            bit = GROUP[cat[0]]
            if name.endswith(", First>"):
                first = (cp, cat)
                continue
            if name.endswith(", Last>"):
                if first is None or first[1] != cat:
                    sys.exit(f"{path}: unmatched range end at U+{cp:04X}")
                for c in range(first[0], cp + 1):
                    flags[c] = bit
                first = None
                continue
            flags[cp] = bit
    return flags


def white_space(path):
    cps = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            rng, prop = (s.strip() for s in line.split(";"))
            if prop != "White_Space":
                continue
            lo, _, hi = rng.partition("..")
            cps.extend(range(int(lo, 16), int(hi or lo, 16) + 1))
    if not cps:
        sys.exit(f"{path}: no White_Space entries")
    return cps


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gen_unicode.py UNICODE_DATA_DIR > unicode_data.c")
    d = sys.argv[1]
    data, props = os.path.join(d, "UnicodeData.txt"), os.path.join(d, "PropList.txt")
    version = version_of(props)
    flags = categories(data)
    for cp in white_space(props):
        flags[cp] |= SPACE

    ranges = [(0, flags[0])]
    for cp in range(1, MAX_CP):
        if flags[cp] != ranges[-1][1]:
            ranges.append((cp, flags[cp]))

    out = sys.stdout
    out.write("/*\n"
              " * unicode_data.c - character classes of every Unicode code point, for\n"
              " * the BPE pre-tokenizers (unicode.c).  GENERATED: do not edit.\n"
              f" * Unicode {version} (UnicodeData.txt, PropList.txt from Debian's\n"
              " * unicode-data package), by\n"
              " *     python3 core/src/gen_unicode.py /usr/share/unicode > core/src/unicode_data.c\n"
              " */\n"
              "#include \"internal.h\"\n\n")
    out.write(f"const char nbi_unicode_version[] = \"{version}\";\n\n")
    out.write("/* U+0000..U+00FF directly. */\n"
              "const uint8_t nbi_unicode_latin1[256] = {\n")
    for i in range(0, 256, 16):
        out.write("    " + ", ".join(f"0x{flags[c]:02x}" for c in range(i, i + 16)) + ",\n")
    out.write("};\n\n")
    out.write("/* (first code point << 8) | flags; a range runs to the next one's first\n"
              " * code point, the last to U+10FFFF. */\n"
              f"const uint32_t nbi_unicode_ranges[{len(ranges)}] = {{\n")
    for i in range(0, len(ranges), 6):
        row = ranges[i:i + 6]
        out.write("    " + ", ".join(f"0x{(cp << 8) | fl:08x}" for cp, fl in row) + ",\n")
    out.write("};\n")
    out.write(f"const size_t nbi_unicode_n_ranges = {len(ranges)};\n")


if __name__ == "__main__":
    main()
