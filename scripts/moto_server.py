#!/usr/bin/env python3
"""moto's server for Rafter's wire tests, with the few things moto 5.2 lacks.

Starts moto's ThreadedMotoServer on a loopback port and a small control server beside it:

  POST /fleet-errors  {"code", "instance_type", "zone"?, "capacity_type"?, "times"?}
      The next CreateFleet calls drop matching overrides and report each as an Errors[] entry of a
      200 reply, as real EC2 reports insufficient capacity for an instant fleet.
  POST /faults        {"action", "code", "message"?, "status"?, "times"?}
      The next calls of an action fail whole, e.g. RequestLimitExceeded with status 503.
  POST /ssm           {"name", "value"}
      Writes a parameter, including the /aws/service/... names moto refuses through PutParameter.
  POST /clear         Forgets queued faults and the call counts.
  GET  /calls         Calls received so far, by action: {"CreateFleet": 3, ...}.
  POST /iam-enforce   {"policy"}
      Turns on moto's IAM enforcement (authentication and action-level authorization of every
      request). The "testing" key becomes a user allowed everything (the tests' own calls); a new
      user holds only `policy`, and its key is returned: {"accessKeyId", "secretAccessKey"}.
  GET  /denied        Requests moto's enforcement refused: [{"action", "principal"}].
  POST /aws           {"service", "operation", "params"?, "region"?}
      Makes one call with boto3 against this moto, e.g. CloudFormation's create_stack or
      EventBridge's put_events, for the tests that drive services Rafter has no client for.
      Replies with the call's result, or 400 and {"error"} naming the AWS error.

Prints one JSON line, {"endpoint": "http://127.0.0.1:PORT", "control": "http://127.0.0.1:PORT"},
then serves until its standard input closes, so it dies with the test process that started it.
"""

import json
import logging
import sys
import threading
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from moto import settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.core.responses import ActionResult, BaseResponse
from moto.core.utils import utcnow
from moto.ec2.responses.fleets import Fleets
from moto.iam.access_control import IAMRequest
from moto.iam.models import iam_backends
from moto.server import ThreadedMotoServer
from moto.ssm.models import Parameter, ssm_backends

ACCOUNT = "123456789012"
LOCK = threading.Lock()
FLEET_ERRORS: list[dict] = []
FAULTS: list[dict] = []
CALLS: Counter = Counter()
DENIED: list[dict] = []
ENDPOINT = ""


def _take_fault(action: str):
    with LOCK:
        CALLS[action] += 1
        for fault in FAULTS:
            if fault["action"] == action and fault["times"] > 0:
                fault["times"] -= 1
                return dict(fault)
    return None


def _fleet_error_for(instance_type: str, zone: str, capacity_type: str):
    with LOCK:
        for rule in FLEET_ERRORS:
            if rule["times"] <= 0:
                continue
            if rule["instance_type"] != instance_type:
                continue
            if rule.get("zone") and rule["zone"] != zone:
                continue
            if rule.get("capacity_type") and rule["capacity_type"] != capacity_type:
                continue
            rule["times"] -= 1
            return rule
    return None


_original_call_action = BaseResponse.call_action


def _call_action(self):
    action = self._get_action()
    fault = _take_fault(action)
    if fault is None:
        return _original_call_action(self)
    body = (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
        f"<Code>{fault['code']}</Code><Message>{fault.get('message') or fault['code']}</Message>"
        f"</Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
    )
    return fault.get("status", 400), {"Content-Type": "text/xml"}, body


def _create_fleet(self):
    """moto's CreateFleet, with queued per-override errors reported the way EC2 reports them."""
    target = self._get_param("TargetCapacitySpecification", {})
    capacity_type = target.get("DefaultTargetCapacityType") or "on-demand"
    configs = self._get_param("LaunchTemplateConfigs", [])
    errors = []
    kept_configs = []
    for config in configs:
        kept = []
        for override in config.get("Overrides") or []:
            zone = override.get("AvailabilityZone")
            if not zone and override.get("SubnetId"):
                zone = self.ec2_backend.get_subnet(override["SubnetId"]).availability_zone
            rule = _fleet_error_for(override.get("InstanceType", ""), zone or "", capacity_type)
            if rule is None:
                kept.append(override)
                continue
            errors.append(
                {
                    "LaunchTemplateAndOverrides": {
                        "LaunchTemplateSpecification": config["LaunchTemplateSpecification"],
                        "Overrides": override,
                    },
                    "Lifecycle": capacity_type,
                    "ErrorCode": rule["code"],
                    "ErrorMessage": rule.get("message")
                    or f"There is no {capacity_type} capacity for {override.get('InstanceType')} in {zone}.",
                }
            )
        if kept:
            kept_configs.append(dict(config, Overrides=kept))
    if not kept_configs:
        return ActionResult({"FleetId": f"fleet-{uuid.uuid4()}", "Errors": errors, "Instances": []})
    fleet = self.ec2_backend.create_fleet(
        on_demand_options=self._get_param("OnDemandOptions", {}),
        spot_options=self._get_param("SpotOptions", {}),
        target_capacity_specification=target,
        launch_template_configs=kept_configs,
        excess_capacity_termination_policy=self._get_param("ExcessCapacityTerminationPolicy"),
        replace_unhealthy_instances=self._get_param("ReplaceUnhealthyInstances"),
        terminate_instances_with_expiration=self._get_param("TerminateInstancesWithExpiration", if_none=True),
        fleet_type=self._get_param("Type", if_none="maintain"),
        valid_from=self._get_param("ValidFrom"),
        valid_until=self._get_param("ValidUntil"),
        tag_specifications=self._get_param("TagSpecifications", []),
    )
    result = {"FleetId": fleet.id, "Errors": errors}
    if fleet.instances is not None:
        result["Instances"] = fleet.instances
    return ActionResult(result)


BaseResponse.call_action = _call_action
Fleets.create_fleet = _create_fleet

_original_raise_access_denied = IAMRequest._raise_access_denied


def _raise_access_denied(self):
    with LOCK:
        DENIED.append({"action": self._action, "principal": getattr(self._access_key, "arn", "?")})
    return _original_raise_access_denied(self)


IAMRequest._raise_access_denied = _raise_access_denied


def _enforce_iam(policy) -> dict:
    """Users for enforcement, made before it starts; then moto authorizes every request."""
    import boto3

    iam = boto3.client(
        "iam", endpoint_url=ENDPOINT, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.create_user(UserName="tests")
    iam.put_user_policy(UserName="tests", PolicyName="everything", PolicyDocument=json.dumps(everything))
    iam.create_access_key(UserName="tests")
    # The tests sign with "testing"/"testing": that key becomes the all-allowed user's.
    key = iam_backends[ACCOUNT]["aws"].users["tests"].access_keys[-1]
    key.access_key_id, key.secret_access_key = "testing", "testing"
    iam.create_user(UserName="rafter-controller")
    iam.put_user_policy(UserName="rafter-controller", PolicyName="RafterController", PolicyDocument=json.dumps(policy))
    created = iam.create_access_key(UserName="rafter-controller")["AccessKey"]
    # What moto's /moto-api/reset-auth does, in this process: authenticate from the next request on.
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
    return {"accessKeyId": created["AccessKeyId"], "secretAccessKey": created["SecretAccessKey"]}


def _put_ssm(name: str, value: str, region: str) -> None:
    backend = ssm_backends[ACCOUNT][region]
    versions = backend._parameters[name]
    versions.append(
        Parameter(
            account_id=ACCOUNT,
            name=name,
            value=value,
            parameter_type="String",
            description=None,
            allowed_pattern=None,
            keyid=None,
            last_modified_date=utcnow(),
            version=len(versions) + 1,
            data_type="text",
        )
    )


class Control(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet: the tests read our stdout
        pass

    def _reply(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _aws(self, body) -> None:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        if "service" not in body or "operation" not in body:
            return self._reply(400, {"error": "aws needs service and operation"})
        client = boto3.client(
            body["service"],
            endpoint_url=ENDPOINT,
            region_name=body.get("region", "us-east-1"),
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        try:
            result = getattr(client, body["operation"])(**body.get("params", {}))
        except (ClientError, BotoCoreError, AttributeError, TypeError) as e:
            return self._reply(400, {"error": f"{body['service']}.{body['operation']}: {e}"})
        result.pop("ResponseMetadata", None)
        self._reply(200, json.loads(json.dumps(result, default=str)))

    def do_GET(self):
        if self.path == "/calls":
            with LOCK:
                return self._reply(200, dict(CALLS))
        if self.path == "/denied":
            with LOCK:
                return self._reply(200, list(DENIED))
        self._reply(404, {"error": f"no such path {self.path}"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError as e:
            return self._reply(400, {"error": f"body is not JSON: {e}"})
        if self.path == "/aws":
            # Not under LOCK: the call comes back into moto, which takes it to count the action.
            return self._aws(body)
        if self.path == "/iam-enforce":
            if "policy" not in body:
                return self._reply(400, {"error": "iam-enforce needs policy"})
            return self._reply(200, _enforce_iam(body["policy"]))
        with LOCK:
            if self.path == "/fleet-errors":
                if "code" not in body or "instance_type" not in body:
                    return self._reply(400, {"error": "fleet-errors needs code and instance_type"})
                FLEET_ERRORS.append(dict(body, times=int(body.get("times", 1))))
            elif self.path == "/faults":
                if "code" not in body or "action" not in body:
                    return self._reply(400, {"error": "faults needs action and code"})
                FAULTS.append(dict(body, times=int(body.get("times", 1))))
            elif self.path == "/clear":
                FLEET_ERRORS.clear()
                FAULTS.clear()
                CALLS.clear()
            elif self.path == "/ssm":
                if "name" not in body or "value" not in body:
                    return self._reply(400, {"error": "ssm needs name and value"})
                _put_ssm(body["name"], body["value"], body.get("region", "us-east-1"))
            else:
                return self._reply(404, {"error": f"no such path {self.path}"})
        self._reply(200, {"ok": True})


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log on the tests' stderr
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    global ENDPOINT
    ENDPOINT = f"http://{host}:{port}"
    control = ThreadingHTTPServer(("127.0.0.1", 0), Control)
    threading.Thread(target=control.serve_forever, daemon=True).start()
    print(
        json.dumps({"endpoint": f"http://{host}:{port}", "control": f"http://127.0.0.1:{control.server_port}"}),
        flush=True,
    )
    sys.stdin.read()  # until the parent closes it or dies
    control.shutdown()
    moto.stop()


if __name__ == "__main__":
    main()
