"""A real RTSP server for the tests: GStreamer's, serving an H.264 .mp4 file at rtsp://127.0.0.1:PORT/s.

    /usr/bin/python3 tests/rtsp_server.py FILE.mp4 PORT [--scale WIDTHxHEIGHT]

Runs with Debian's Python (it has `gi`; Debian packages gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-good
and -bad). The file loops, so a client sees an endless stream; kill the process to drop the stream.
With --scale the video is decoded, scaled and re-encoded (openh264), e.g. to a 640×480 camera-like stream.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


class LoopingFactory(GstRtspServer.RTSPMediaFactory):
    """Seeks back to the start at the end of the file instead of ending the stream."""

    def do_configure(self, media):
        GstRtspServer.RTSPMediaFactory.do_configure(self, media)
        media.connect("new-state", self._arm_loop)

    def _arm_loop(self, media, state):
        if state != Gst.State.PLAYING or getattr(media, "_looping", False):
            return
        media._looping = True
        demux = media.get_element().get_by_name("d")
        pad = demux.get_static_pad("video_0") if demux else None
        if pad is None:
            demux.connect("pad-added", lambda _d, p: p.add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, self._on_eos,
                                                                  media))
        else:
            pad.add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, self._on_eos, media)

    @staticmethod
    def _on_eos(pad, info, media):
        if info.get_event().type == Gst.EventType.EOS:
            GLib.idle_add(lambda: media.get_element().seek_simple(
                Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0) and False)
            return Gst.PadProbeReturn.DROP
        return Gst.PadProbeReturn.OK


def main() -> None:
    path, port = sys.argv[1], sys.argv[2]
    scale = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--scale" else None
    Gst.init(None)
    server = GstRtspServer.RTSPServer.new()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = LoopingFactory()
    if scale:
        width, height = scale.split("x")
        launch = (f"( filesrc location={path} ! qtdemux name=d d.video_0 ! h264parse ! openh264dec ! videoscale ! "
                  f"video/x-raw,width={width},height={height} ! videoconvert ! openh264enc ! h264parse ! "
                  "rtph264pay name=pay0 pt=96 config-interval=1 )")
    else:
        launch = (f"( filesrc location={path} ! qtdemux name=d d.video_0 ! h264parse ! "
                  "rtph264pay name=pay0 pt=96 config-interval=1 )")
    factory.set_launch(launch)
    factory.set_shared(True)
    server.get_mount_points().add_factory("/s", factory)
    server.attach(None)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
