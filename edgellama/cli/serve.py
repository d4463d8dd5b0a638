import click

from edgellama.cli.devices import device_options
from edgellama.devices.serve import REQUEST_TIMEOUT_S
from edgellama.errors import EdgeLlamaError


def parse_listen(value: str) -> tuple:
    """ADDR:PORT (IPv6 as [ADDR]:PORT) -> (addr, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise EdgeLlamaError(f"--listen: expected ADDR:PORT, got {value!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


@click.command("serve")
@device_options
@click.option("--listen", default="127.0.0.1:8000", show_default=True, help="Address and port to serve on.")
@click.option("--served-model-name", help="The model id clients name (default: the model file's stem).")
@click.option("--chat-template", type=click.Choice(["plain", "llama2", "chatml"]),
              help="Local runtime only. Default: the one the model's metadata names, else plain.")
@click.option("--request-timeout", type=click.FloatRange(min=0.1), default=REQUEST_TIMEOUT_S, show_default=True,
              help="Seconds a client may stay silent mid-request or idle between requests before it is dropped.")
@click.option("--verbose", is_flag=True, help="Log every request.")
def command(board, host, port, local, model, threads, listen, served_model_name, chat_template, request_timeout,
            verbose):
    """An OpenAI-compatible HTTP server in front of the runtime or a device.

    POST /v1/completions and /v1/chat/completions (streamed as server-sent events or
    not), GET /v1/models, GET /health. vLLM's extra sampling fields (top_k, min_p,
    repetition_penalty, ...) are accepted. A device runs one request at a time."""
    from edgellama.devices import serve
    from edgellama.devices.device import LocalDevice
    from edgellama.devices.opener import open_device
    addr, listen_port = parse_listen(listen)
    device = open_device(board=board, host=host, port=port, local=local, model=model, threads=threads)
    try:
        if chat_template and not isinstance(device, LocalDevice):
            raise EdgeLlamaError("--chat-template: a device uses its model's own template")
        try:
            serve.run(device, addr, listen_port, model_name=served_model_name, chat_template=chat_template,
                      verbose=verbose, request_timeout=request_timeout)
        except OSError as e:
            raise EdgeLlamaError(f"--listen {listen}: {e.strerror or e}") from None
    finally:
        device.close()
