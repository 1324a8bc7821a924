"""A schemathesis check of cellforge's own (loaded with SCHEMATHESIS_HOOKS by test_fuzz_serving): every
4xx answer is an ErrorBody whose problems each name a field."""

import schemathesis


@schemathesis.check
def every_4xx_names_the_field(ctx, response, case):
    if not 400 <= response.status_code < 500:
        return None
    body = response.json()
    problems = body.get("problems") if isinstance(body, dict) else None
    assert problems and all(isinstance(p.get("field"), str) and p["field"] for p in problems), (
        f"a {response.status_code} answer names no field: {body!r}")
    return None
