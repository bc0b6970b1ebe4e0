#!/usr/bin/env bash
# Renders assets/screenshot.png: the standalone app's editor with a few takes
# made by the tiny fixture model, under Xvfb with Mesa's software OpenGL (what
# CI has). Needs: xvfb, xdotool, x11-apps (xwd), Python with Pillow.
#   assets/make_screenshot.sh [SCALE]   (SCALE 1 or 2: the editor's zoom)
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-1}
work=$(mktemp -d)
trap 'kill $xvfb $app 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build -q -p promptloop --features standalone --bin promptloop-standalone
cargo run -q -p promptloop --example demo_session -- \
    "$PWD/tests/fixtures/models/tiny-a" "$work/takes" > "$work/session.json"

python=${PYTHON:-target/pyvenv/bin/python}
"$python" -c "import PIL" 2>/dev/null || "$python" -m pip install -q pillow

display=:$((200 + RANDOM % 200))
Xvfb "$display" -screen 0 1920x1600x24 -nolisten tcp & xvfb=$!
sleep 1
# A desktop's usual font resolution (baseview takes its scale from Xft.dpi).
echo "Xft.dpi: 96" | DISPLAY=$display xrdb -merge
DISPLAY=$display LIBGL_ALWAYS_SOFTWARE=1 PROMPTLOOP_SESSION="$work/session.json" \
    PROMPTLOOP_EDITOR_ZOOM=$scale target/debug/promptloop-standalone --backend dummy & app=$!
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
size, width, height, bytes_per_line, ncolors = header[0], header[4], header[5], header[12], header[19]
pixels = data[size + ncolors * 12:]
img = Image.frombuffer("RGBX", (width, height), pixels[: bytes_per_line * height], "raw", "BGRX", bytes_per_line, 1)
x, y, w, h = map(int, sys.argv[3].split(","))
img = img.convert("RGB").crop((x, y, x + w, y + h))
img.crop(img.getbbox()).save(sys.argv[2])  # the drawn area of the window
PY
echo "wrote $out"
