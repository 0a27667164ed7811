"""A real RTSP server for the camera tests and the stream benchmark: GStreamer's gst-rtsp-server.

Runs under the system Python, which has PyGObject and Debian's gir1.2-gst-rtsp-server-1.0 (the
project's virtualenv needs neither). Each mount serves a folder of numbered JPEG frames as a looping
H.264 stream at its own frame rate, like an IP camera:

    /usr/bin/python3 tests/rtsp_server.py PORT NAME=DIR@FPS [NAME=DIR@FPS ...] [--auth USER:PASSWORD]

Prints `ready` once it listens. With --auth every mount needs those basic-auth credentials.
"""

from __future__ import annotations

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2
    Gst.init(None)
    auth_arg = argv[argv.index("--auth") + 1] if "--auth" in argv else None
    mounts_args = [a for a in argv[1:] if "=" in a]
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(argv[0])
    if auth_arg:
        user, password = auth_arg.split(":", 1)
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "camera-user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
    mounts = server.get_mount_points()
    for spec in mounts_args:
        name, rest = spec.split("=", 1)
        directory, fps = rest.rsplit("@", 1)
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(
            f'( multifilesrc location="{directory}/%05d.jpg" index=0 loop=true '
            f'caps="image/jpeg,framerate={fps}/1" ! jpegdec ! videoconvert ! '
            f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=2000 ! "
            "rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
        factory.set_shared(True)
        if auth_arg:
            factory.add_role_from_structure(
                Gst.Structure.new_from_string(
                    "camera-user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
                )
            )
        mounts.add_factory(f"/{name}", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{argv[0]}", file=sys.stderr)
        return 1
    print("ready", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
