"""A tiny MCP server for tests: ``echo`` and ``read_file`` tools over streamable HTTP.

    python tests/fake_mcp_server.py --port 8765     # serves http://127.0.0.1:8765/mcp

``read_file`` returns a fixed text for any path (nothing is read from disk), so a test can see a
tool result travel back through the proxy.
"""

from __future__ import annotations

import argparse

from mcp.server.mcpserver import MCPServer

FILE_TEXT = "contents of {path}: hello from the fake MCP server"

server = MCPServer("fake-tools")


@server.tool()
def echo(text: str) -> str:
    """Return ``text`` unchanged."""
    return text


@server.tool()
def read_file(path: str) -> str:
    """Return a fixed text naming ``path``."""
    return FILE_TEXT.format(path=path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    server.run("streamable-http", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
