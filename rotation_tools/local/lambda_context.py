"""A stand-in for the context object the Lambda runtime passes to a handler, for in-process invocations.

It carries the attributes the runtime's context has (Powertools reads several of them when it decorates a
handler) and a remaining-time clock that counts down from the function's configured timeout, so code that
budgets its work against ``get_remaining_time_in_millis()`` behaves as it would in Lambda.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

#: What Lambda uses when a function sets no Timeout/MemorySize; the template normally overrides both.
DEFAULT_TIMEOUT_SECONDS = 3
DEFAULT_MEMORY_MB = 128
#: The account id AWS documentation uses in examples: obviously not a real account.
PLACEHOLDER_ACCOUNT_ID = "123456789012"
DEFAULT_REGION = "us-east-1"


def local_region() -> str:
    """The region a boto3 program would use here, for the ARN only (boto3 resolves its own)."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


@dataclass
class LambdaContext:
    function_name: str
    memory_limit_in_mb: int = DEFAULT_MEMORY_MB
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    region: str = field(default_factory=local_region)
    account_id: str = PLACEHOLDER_ACCOUNT_ID
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: Injectable so tests can drive the countdown without sleeping.
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    _started: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._started = self.clock()

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        day = time.strftime("%Y/%m/%d", time.gmtime())
        return f"{day}/[{self.function_version}]{self.aws_request_id.replace('-', '')}"

    def get_remaining_time_in_millis(self) -> int:
        elapsed = self.clock() - self._started
        return max(0, int((self.timeout_seconds - elapsed) * 1000))
