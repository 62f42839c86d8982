"""Several operations in one request (API.md: Transactions and batches): /txn, compares and
then one branch, all or nothing; /batch, independent operations with a result each."""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from django.http import HttpRequest, HttpResponse
from ninja import Field, Router, Schema
from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator, with_config
from typing_extensions import TypedDict  # pydantic needs it for a TypedDict before Python 3.12

from memory_admin.api.agents import StatusIn, status_body
from memory_admin.api.common import Id, Key, actor_of, agent_of, errors, json_response, ns_of, token_of
from memory_admin.api.events import EventIn
from memory_admin.api.facts import FactIn, fact_body
from memory_admin.errors import Forbidden
from memory_admin.services import records
from memory_admin.services import txn as txns

router = Router(tags=["transactions"])

MAX_OPS = txns.MAX_OPS


class Body(BaseModel):
    """As api.common.In (unknown fields and coercion refused), but a plain pydantic model: ninja's Schema
    validates a body that forbids extra fields twice, and once more through its attribute
    getter, at every level of nesting; with 50 operations of two levels each, that was half
    the web process's time on a /txn of 50 puts (py-spy, bench scenario 9)."""

    model_config = ConfigDict(extra="forbid", strict=True)


# The operations are TypedDicts: each is validated into the dict its service takes, with no
# model built, dumped and checked field by field in Python per operation (a /txn of 50 puts
# spent a tenth of the web process's CPU there).
STRICT = ConfigDict(extra="forbid", strict=True)


Expected = Annotated[Id | None, Field(description="as PUT /records/{key}: absent, 0 or n")]


@with_config(STRICT)
class PutOp(TypedDict):
    key: Key
    value: Annotated[Any, Field(description="any JSON, null included")]
    expected_version: NotRequired[Expected]


@with_config(STRICT)
class DeleteOp(TypedDict):
    key: Key
    expected_version: NotRequired[Expected]


@with_config(STRICT)
class GetOp(TypedDict):
    key: Key


@with_config(STRICT)
class OpIn(TypedDict, total=False):
    """Exactly one of these, with the body its single endpoint takes."""

    put: PutOp
    delete: DeleteOp
    get: GetOp
    fact: FactIn
    event: EventIn
    status: StatusIn


def _one(item: dict[str, Any]) -> dict[str, Any]:
    if len(item) != 1:
        raise ValueError("an operation has exactly one of: put, delete, get, fact, event, status")
    return item


OneOp = Annotated[OpIn, AfterValidator(_one)]


def _op(item: dict[str, Any]) -> txns.Op:
    """Exactly one of the kinds, with the body its single endpoint takes."""
    ((kind, args),) = item.items()
    return txns.Op(kind=kind, args=args if type(args) is dict else args.model_dump())


class VersionTest(Body):
    op: Literal["=", "!=", "<", ">"]
    value: Id


class CompareIn(Body):
    """`{"key", "version": n | {"op", "value"}}`, `{"key", "exists": bool}` or
    `{"lock", "fencing_token"}`. A version of 0 means absent."""

    key: Key | None = None
    version: Id | VersionTest | None = None
    exists: bool | None = None
    lock: Key | None = None
    fencing_token: Id | None = None

    @model_validator(mode="after")
    def _one(self) -> CompareIn:
        on_record = self.key is not None and (self.version is None) != (self.exists is None)
        on_lock = self.lock is not None and self.fencing_token is not None
        record_fields = (self.key, self.version, self.exists)
        lock_fields = (self.lock, self.fencing_token)
        if not (
            (on_record and all(f is None for f in lock_fields))
            or (on_lock and all(f is None for f in record_fields))
        ):
            raise ValueError(
                'a compare is {"key", "version"}, {"key", "exists"} or {"lock", "fencing_token"}'
            )
        return self

    def compare(self) -> txns.Compare:
        if self.lock is not None:
            return txns.Compare(lock=self.lock, fencing_token=self.fencing_token)
        if self.exists is not None:
            return txns.Compare(key=self.key, exists=self.exists)
        if isinstance(self.version, VersionTest):
            return txns.Compare(key=self.key, op=self.version.op, version=self.version.value)
        return txns.Compare(key=self.key, version=self.version)


class TxnIn(Body):
    compare: list[CompareIn] = Field(default_factory=list, max_length=MAX_OPS)
    success: list[OneOp] = Field(default_factory=list, max_length=MAX_OPS)
    failure: list[OneOp] = Field(default_factory=list, max_length=MAX_OPS)


class BatchIn(Body):
    ops: list[OneOp] = Field(max_length=MAX_OPS)


class ResultOut(Schema):
    status: int = Field(description="what the single endpoint would answer: 200, 201, 204, 404, 409, 422")
    body: Any = Field(description="its body (null for 204); an error is the usual error shape")


class TxnOut(Schema):
    succeeded: bool = Field(description="true: every compare held and `success` ran; false: `failure` ran")
    results: list[ResultOut]
    txn: str = Field(description="the transaction's id, also in its events' `txn`")


class BatchOut(Schema):
    results: list[ResultOut]


@router.post("/txn", response={200: TxnOut, **errors(403, 409)}, url_name="txn")
def txn(request: HttpRequest, body: TxnIn):
    """Compares, then `success` if all hold or `failure` if not, in one Postgres transaction.
    An operation of that branch that fails aborts it all: 409 `txn_aborted` with `failed_op`
    and its `error`; its record writes are kept as one conflict group."""
    ops = [_op(item) for item in body.success], [_op(item) for item in body.failure]
    _check_scope(request, [*ops[0], *ops[1]])
    done = txns.run_txn(
        ns=ns_of(request),
        agent=agent_of(request),
        actor=actor_of(request),
        compare=[item.compare() for item in body.compare],
        success=ops[0],
        failure=ops[1],
    )
    return _json(
        {"succeeded": done.succeeded, "results": [_result(item) for item in done.results], "txn": done.txn}
    )


@router.post("/batch", response={200: BatchOut, **errors(403)}, url_name="batch")
def batch(request: HttpRequest, body: BatchIn):
    """Independent operations in one round trip, each with its own result (and error)."""
    ops = [_op(item) for item in body.ops]
    _check_scope(request, ops)
    done = txns.run_batch(ns=ns_of(request), agent=agent_of(request), actor=actor_of(request), ops=ops)
    return _json({"results": [_result(item) for item in done]})


def _check_scope(request: HttpRequest, ops: list[txns.Op]) -> None:
    token = token_of(request)
    if token.read_only and any(op.kind != "get" for op in ops):
        raise Forbidden("this token is read-only: it may only send get operations", scopes=token.scopes)


def _result(done: txns.Done) -> dict[str, Any]:
    """An operation's result as its single endpoint would answer it."""
    if done.error is not None:
        return {"status": done.error.status, "body": done.error.body()}
    if done.kind in ("put", "get"):
        return {"status": 201 if done.created else 200, "body": records.record_body(done.value)}
    if done.kind == "delete":
        return {"status": 204, "body": None}
    if done.kind == "fact":
        return {"status": 201, "body": fact_body(done.value)}
    if done.kind == "event":
        return {"status": 201, "body": done.value.body()}
    body = status_body(done.value)
    del body["state"]
    return {"status": 200, "body": body}


def _json(data: dict[str, Any]) -> HttpResponse:
    # Built by hand, not validated item by item against the schema: 128 results are ours.
    return json_response(data)
