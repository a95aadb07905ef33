"""The log as operators read it: one logfmt line per event, recent lines for monitor."""

from __future__ import annotations

import asyncio
import gc
import logging

from corec_node import log


def test_recent_lines_are_read_from_a_cursor_and_say_what_was_not_kept():
    recent = log.RecentLines(keep=3)
    recent.setFormatter(log.LogfmtFormatter("n"))
    logger = logging.getLogger("corec.test.recent")
    logger.addHandler(recent)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        assert recent.since(-1) == ([], 0, 0)  # "from now on": nothing yet, the cursor where now is
        for i in range(5):
            logger.info(f"e{i}")
        lines, after, missed = recent.since(0)
        assert after == 5 and missed == 2 and [line.split("event=")[1] for line in lines] == ["e2", "e3", "e4"]
        assert recent.since(4)[0][0].endswith("event=e4") and recent.since(5) == ([], 5, 0)
    finally:
        logger.removeHandler(recent)


def test_an_exception_nothing_awaited_is_one_line_with_its_traceback_only_at_debug(capsys):
    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(log.loop_exception)

        async def boom() -> None:
            raise ConnectionResetError("peer gone")

        task = loop.create_task(boom())
        await asyncio.sleep(0.01)
        del task
        gc.collect()
        await asyncio.sleep(0.01)

    for level, lines in (("info", 1), ("debug", 2)):
        log.setup("n", level)
        asyncio.run(main())
        out = capsys.readouterr().out.splitlines()
        assert len(out) == lines, out
        fields = log.parse_line(out[0])
        assert fields["event"] == "loop_exception" and fields["error"] == "ConnectionResetError: peer gone"
        assert all(line.startswith("ts=") for line in out)  # no raw traceback lines
    log.setup("n", "info")
