"""An example thaw function in Python, run by AWS's own runtime client, awslambdaric.

Nothing here knows about thaw: the same file runs on AWS Lambda's Python runtime. thaw
starts `python -m awslambdaric handler.handler` in this directory (the manifest's
`command` and `workdir`), inside the same sandbox as its Rust functions, and scales,
queues, retries and routes it like them.

Input:  {"text": "some words", "sleep": 0.5?}
Output: {"words": 2, "upper": "SOME WORDS", "request_id": "..."}
Anything else raises ValueError, which reaches the caller as the function's error with
its type and stack trace.

Through a function URL (`/fn/words-py/`) the event is an HTTP request (payload format
2.0), as on AWS: the input is its JSON body, and the answer an HTTP response, 400 for
bad input.
"""

import base64
import json
import time


def _check(event):
    if not isinstance(event, dict) or not isinstance(event.get("text"), str):
        raise ValueError('expected {"text": string}, got ' + repr(event)[:80])
    sleep = event.get("sleep", 0)
    if not isinstance(sleep, (int, float)) or not 0 <= sleep <= 30:
        raise ValueError("sleep must be a number of seconds from 0 to 30")
    return event["text"], float(sleep)


def handler(event, context):
    if isinstance(event, dict) and "requestContext" in event and "rawPath" in event:
        return _http(event, context)
    return _words(event, context)


def _http(event, context):
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body).decode("utf-8", "replace")
    try:
        result = _words(json.loads(body), context)
    except (ValueError, json.JSONDecodeError) as e:
        return {"statusCode": 400, "headers": {"content-type": "application/json"},
                "body": json.dumps({"error": {"type": "InvalidInput", "message": str(e)}})}
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps(result)}


def _words(event, context):
    text, sleep = _check(event)
    # Printed lines are the call's log: `thaw logs`, and LogType=Tail on the Invoke API.
    print(f"counting the words of {len(text)} characters")
    if sleep:
        time.sleep(sleep)
    return {
        "words": len(text.split()),
        "upper": text.upper(),
        "request_id": context.aws_request_id,
    }
