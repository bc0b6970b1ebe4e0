#!/usr/bin/env bash
# Renders assets/screenshot.png: the standalone app's editor with a few takes
# made by the tiny fixture model, under Xvfb with Mesa's software OpenGL (what
# CI has). Needs: xvfb, xdotool, x11-apps (xwd), Python with Pillow.
#   assets/make_screenshot.sh [SCALE]   (SCALE 1 or 2: the desktop's scale)
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-1}
work=$(mktemp -d)
trap 'kill $xvfb $app 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build -q -p promptloop --features standalone --bin promptloop-standalone
cargo run -q -p promptloop --features test-hooks --example demo_session -- \
    "$PWD/tests/fixtures/models/tiny-a" "$work/takes" > "$work/session.json"

python=${PYTHON:-target/pyvenv/bin/python}
"$python" -c "import PIL" 2>/dev/null || "$python" -m pip install -q pillow

display=:$((200 + RANDOM % 200))
Xvfb "$display" -screen 0 1920x1600x24 -nolisten tcp -noreset & xvfb=$!
sleep 1
# The desktop's font resolution, which baseview takes its scale from: 96 dpi
# is 100%, 192 dpi is a HiDPI screen at 200%.
echo "Xft.dpi: $((96 * scale))" | DISPLAY=$display xrdb -merge
DISPLAY=$display LIBGL_ALWAYS_SOFTWARE=1 PROMPTLOOP_SESSION="$work/session.json" \
    target/debug/promptloop-standalone --backend dummy & app=$!
for _ in $(seq 50); do
    win=$(DISPLAY=$display xdotool search --name Promptloop 2>/dev/null | head -n1 || true)
    [ -n "$win" ] && break
    sleep 0.2
done
sleep 3 # the takes load and the window draws
eval "$(DISPLAY=$display xdotool getwindowgeometry --shell "$win")"
DISPLAY=$display xwd -root -silent > "$work/shot.xwd"
out=assets/screenshot.png
[ "$scale" = 1 ] || out=assets/screenshot-${scale}x.png
"$python" - "$work/shot.xwd" "$out" "$X,$Y,$WIDTH,$HEIGHT" <<'PY'
import struct, sys
from PIL import Image
data = open(sys.argv[1], "rb").read()
header = struct.unpack(">25I", data[:100])
size, bytes_per_line, ncolors = header[0], header[12], header[19]
pixels = data[size + ncolors * 12:]
x, y, w, h = map(int, sys.argv[3].split(","))
def window(bytes_per_pixel):
    return b"".join(
        pixels[(y + r) * bytes_per_line + x * 4:][: w * bytes_per_pixel] for r in range(h)
    )
img = Image.frombytes("RGB", (w, h), window(4), "raw", "BGRX")
# Under Xvfb, Mesa's software OpenGL can put the window's pixels into the
# 32-bit framebuffer as packed 24-bit BGR: the picture is then squeezed into
# the left three quarters of the window, striped, with black beside it.
# Read it back as what it is.
if img.crop((w * 3 // 4 + 2, 0, w, h)).getbbox() is None:
    img = Image.frombytes("RGB", (w, h), window(3), "raw", "BGR")
img.save(sys.argv[2])
PY
echo "wrote $out"
