"""Loads Promptloop.vst3 in pedalboard (Spotify's JUCE-based host) as a DAW
would, lists its parameters, renders audio, and requests a generation through
the plugin's state and MIDI trigger. Prints one JSON line of findings; exits
non-zero with the reason when something is wrong.

usage: pedalboard_check.py BUNDLE MODEL_DIR DATA_DIR
"""
import json
import re
import struct
import sys
import time

import numpy as np
import pedalboard

RATE = 48000


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


# pedalboard's raw_state is JUCE's VST3 state: b"VC2!", a little-endian u32
# length, then XML whose <IComponent> holds the plugin's own state in JUCE's
# MemoryBlock base64 ("<size>.<chars>", bits little-endian, 6 per char).
JUCE_B64 = ".ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+"
COMPONENT = re.compile(r"<IComponent>(\d+)\.([^<]*)</IComponent>")


def decode_state(raw):
    raw = bytes(raw)
    if raw[:4] != b"VC2!":
        fail(f"unexpected state header {raw[:8]!r}")
    xml = raw[8 : 8 + struct.unpack("<I", raw[4:8])[0]].decode()
    m = COMPONENT.search(xml)
    size, chars = int(m.group(1)), m.group(2)
    bits = 0
    for i, c in enumerate(chars):
        bits |= JUCE_B64.index(c) << (6 * i)
    component = (bits & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
    return xml, json.loads(component)


def encode_state(xml, state):
    data = json.dumps(state).encode()
    bits = int.from_bytes(data, "little")
    chars = "".join(JUCE_B64[(bits >> (6 * i)) & 63] for i in range((len(data) * 8 + 5) // 6))
    xml = COMPONENT.sub(lambda _: f"<IComponent>{len(data)}.{chars}</IComponent>", xml)
    body = xml.encode()
    return b"VC2!" + struct.pack("<I", len(body)) + body + b"\x00"


def main():
    bundle, model, data = sys.argv[1:4]
    plugin = pedalboard.load_plugin(bundle)
    if not plugin.is_instrument:
        fail("not loaded as an instrument")
    names = sorted(plugin.parameters.keys())
    silent = plugin([], duration=0.25, sample_rate=RATE, num_channels=2, reset=False)
    if silent.shape != (2, RATE // 4) or np.any(silent != 0) or not np.all(np.isfinite(silent)):
        fail(f"an empty instance should render silence, got shape {silent.shape}")

    xml, state = decode_state(plugin.raw_state)
    doc = json.loads(state["fields"]["promptloop"])
    settings = doc["settings"]
    settings.update(
        prompt="lofi piano",
        model={"kind": "local", "path": model},
        precision="f32",
        device="cpu",
        length={"seconds": 1.0},
        seed=21,
        data_folder=data,
    )
    state["fields"]["promptloop"] = json.dumps(doc)
    plugin.raw_state = encode_state(xml, state)

    t0 = time.time()
    # Note 0 (the generate note), then blocks as a playing host renders them.
    plugin([(bytes([0x90, 0, 100]), 0.0)], duration=0.05, sample_rate=RATE, reset=False)
    takes = []
    while time.time() - t0 < 240:
        plugin([], duration=0.05, sample_rate=RATE, reset=False)
        _, state = decode_state(plugin.raw_state)
        takes = json.loads(state["fields"]["promptloop"])["takes"]
        if takes:
            break
        time.sleep(0.05)
    if not takes:
        fail("no take after 240 s")
    seconds = time.time() - t0
    time.sleep(0.3)  # the clip reaches the audio thread just after the take is saved

    out = plugin([(bytes([0x90, 60, 100]), 0.0)], duration=1.5, sample_rate=RATE, reset=False)
    left = out[0]
    sounding = int(np.flatnonzero(left).max()) + 1 if np.any(left) else 0
    result = {
        "parameters": names,
        "take": takes[0]["id"],
        "take_samples_32k": takes[0]["samples"],
        "generation_s": round(seconds, 3),
        "sounding_samples": sounding,
        "channels_equal": bool(np.array_equal(out[0], out[1])),
        "finite": bool(np.all(np.isfinite(out))),
    }
    print(json.dumps(result))
    if names != ["gain_db", "play_mode"]:
        fail(f"parameters {names}")
    if abs(sounding - RATE) > 1:
        fail(f"the 1 s take should sound for {RATE} samples at {RATE} Hz, got {sounding}")
    if not (result["channels_equal"] and result["finite"]):
        fail("bad output")


if __name__ == "__main__":
    main()
