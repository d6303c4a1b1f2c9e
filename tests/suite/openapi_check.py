"""Check a Hubflow admin port's answers against its OpenAPI document.

Input (argv[1]): {"document": <GET /openapi.json>, "answers": [{method,
path, status, body}], "at_least": N}. The document must be a valid OpenAPI
3.1 document (openapi-spec-validator); every answer must be documented for
its method, path and status, and its body must match that response's
schema (jsonschema, draft 2020-12, with the document's components). Exits
1 with every mismatch listed.
"""

import json
import re
import sys

from jsonschema import Draft202012Validator
from openapi_spec_validator import validate


def templates(document):
    """(method, regex, template) for every operation."""
    out = []
    for template, methods in document["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}$", ".+", re.sub(r"\\\{[^/]+?\\\}(?=/)", "[^/]+", re.escape(template))) + "$"
        for method in methods:
            out.append((method, re.compile(pattern), template))
    return out


def operation_of(ops, method, path):
    exact = [t for m, r, t in ops if m == method and t == path]
    if exact:
        return exact[0]
    found = [t for m, r, t in ops if m == method and r.match(path)]
    # The most specific template: the one with the most literal characters.
    return max(found, key=lambda t: len(re.sub(r"\{[^}]*\}", "", t)), default=None)


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        data = json.load(f)
    document = data["document"]
    validate(document)
    ops = templates(document)
    problems = []
    checked = set()
    for answer in data["answers"]:
        method, path, status, body = answer["method"], answer["path"], str(answer["status"]), answer["body"]
        template = operation_of(ops, method, path)
        if template is None:
            # Paths and methods outside the document get the Error document.
            error = dict(document["components"]["schemas"]["Error"])
            if status not in ("404", "405") or not Draft202012Validator(error).is_valid(body):
                problems.append(f"{method} {path}: no such operation, answered {status} {json.dumps(body)[:200]}")
            continue
        responses = document["paths"][template][method]["responses"]
        response = responses.get(status)
        if response is None:
            problems.append(f"{method} {path} ({template}): status {status} is not documented (documented: {sorted(responses)})")
            continue
        content = response.get("content", {}).get("application/json")
        if content is None:
            continue  # not a JSON answer (text, a page, a stream)
        if isinstance(content["schema"], bool):  # true: any JSON (the document itself)
            checked.add((method, template, status))
            continue
        schema = dict(content["schema"])
        schema["components"] = document["components"]
        errors = sorted(Draft202012Validator(schema).iter_errors(body), key=lambda e: list(e.absolute_path))
        for error in errors[:5]:
            where = "/".join(str(p) for p in error.absolute_path)
            problems.append(f"{method} {path} {status}: at /{where}: {error.message[:300]}")
        checked.add((method, template, status))
    print(f"{len(data['answers'])} answers checked, {len(checked)} distinct (operation, status) pairs")
    operations = {(m, t) for m, t, _ in checked}
    if len(operations) < data["at_least"]:
        problems.append(f"only {len(operations)} operations answered, expected at least {data['at_least']}: {sorted(operations)}")
    for problem in problems:
        print(problem)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
