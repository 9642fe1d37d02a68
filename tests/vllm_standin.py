"""A stand-in for `vllm run-batch -i REQUESTS -o RESULTS`: answers every line of a Batch JSONL file.

    python tests/vllm_standin.py -i requests.jsonl -o results.jsonl --url http://127.0.0.1:PORT/v1

Each line's body is POSTed to URL + the line's url path (the fake server plays the model); the
results file has vLLM's output format: {"id", "custom_id", "response": {"status_code", "request_id",
"body"}, "error"}. Stdlib only, one request at a time, as a small offline job would.
"""
import argparse
import json
import urllib.error
import urllib.request


def answer(url: str, line: dict, n: int) -> dict:
    path = line["url"][len("/v1"):] if line["url"].startswith("/v1") else line["url"]
    req = urllib.request.Request(url.rstrip("/") + path, data=json.dumps(line["body"]).encode(),
                                 headers={"Content-Type": "application/json"}, method=line["method"])
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, body = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        status, body = e.code, json.loads(e.read() or b"{}")
    return {"id": f"vllm-{n}", "custom_id": line["custom_id"],
            "response": {"status_code": status, "request_id": f"vllm-batch-{n}", "body": body}, "error": None}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-i", "--input-file", required=True)
    p.add_argument("-o", "--output-file", required=True)
    p.add_argument("--url", required=True, help="OpenAI-compatible base URL that answers each line")
    args = p.parse_args()
    with open(args.input_file, encoding="utf-8") as f:
        lines = [json.loads(x) for x in f if x.strip()]
    with open(args.output_file, "w", encoding="utf-8") as out:
        for n, line in enumerate(lines):
            out.write(json.dumps(answer(args.url, line, n)) + "\n")


if __name__ == "__main__":
    main()
