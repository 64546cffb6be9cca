#!/usr/bin/env python3
"""Checks an ARM deployment template for the mistakes ARM's own validation rejects.

No ARM or Bicep validator installs from the registries this project may use (arm-ttk is PowerShell,
Bicep a .NET binary, `bicep-node` on npm downloads it from GitHub releases, and the JSON schemas live
on schema.management.azure.com), so this is ours, written from the template-language reference:

- the document: `$schema` of a deployment template, `contentVersion` a.b.c.d, the sections known;
- parameters: a known type, a default of that type, inside `allowedValues` and min/max when given;
- every `[...]` expression parses (functions, string literals with '' escapes, numbers, `.prop` and
  `[index]` accessors), calls only template functions, and names only declared parameters and
  variables (the commonest reason a deployment fails before anything is created);
- resources: `Provider.Namespace/type[/child…]`, an `apiVersion` date, a name; a literal child name
  has one segment per type level; `dependsOn` and `resourceId()` types name a resource of the
  template (or a built-in one such as role definitions);
- outputs: a known type and a value.

    python3 scripts/check-arm.py azure/azuredeploy.json

Prints one line per problem and exits 1, or one `ok` line.
"""
import json
import re
import sys

FUNCTIONS = {
    # https://learn.microsoft.com/azure/azure-resource-manager/templates/template-functions
    "array", "concat", "contains", "createArray", "empty", "first", "intersection", "json", "last",
    "length", "max", "min", "range", "skip", "take", "union", "coalesce", "equals", "greater",
    "greaterOrEquals", "less", "lessOrEquals", "createObject", "null", "objectKeys", "items",
    "shallowMerge", "deployment", "environment", "parameters", "variables", "and", "bool", "false",
    "if", "not", "or", "true", "add", "copyIndex", "div", "float", "int", "mod", "mul", "sub",
    "extensionResourceId", "list", "listKeys", "listSecrets", "listAccountSas", "listCallbackUrl",
    "pickZones", "providers", "reference", "resourceGroup", "resourceId", "subscription",
    "subscriptionResourceId", "managementGroup", "managementGroupResourceId", "tenant",
    "tenantResourceId", "base64", "base64ToJson", "base64ToString", "dataUri", "dataUriToString",
    "endsWith", "format", "guid", "indexOf", "lastIndexOf", "newGuid", "padLeft", "replace", "split",
    "startsWith", "string", "substring", "toLower", "toUpper", "trim", "uniqueString", "uri",
    "uriComponent", "uriComponentToString", "utcNow", "dateTimeAdd", "dateTimeFromEpoch",
    "dateTimeToEpoch", "filter", "map", "reduce", "sort", "toObject", "lambda", "lambdaVariables",
}
PARAM_TYPES = {"string", "securestring", "int", "bool", "object", "secureobject", "array"}
SECTIONS = {"$schema", "contentVersion", "metadata", "apiProfile", "parameters", "functions",
            "variables", "resources", "outputs", "definitions"}
# Resource types a template may name without declaring them (built-in or pre-existing).
BUILT_IN = {"Microsoft.Authorization/roleDefinitions"}

problems = []


class Expr:
    """Recursive-descent parser for one template expression (the text inside `[ ]`)."""

    def __init__(self, text):
        self.s, self.i, self.calls = text, 0, []

    def fail(self, why):
        raise ValueError(f"{why} at column {self.i + 1} of [{self.s}]")

    def ws(self):
        while self.i < len(self.s) and self.s[self.i] == " ":
            self.i += 1

    def parse(self):
        self.value()
        self.ws()
        if self.i != len(self.s):
            self.fail("unexpected text")
        return self.calls

    def value(self):
        self.ws()
        if self.i >= len(self.s):
            self.fail("missing value")
        c = self.s[self.i]
        if c == "'":
            self.string()
        elif c.isdigit() or c == "-":
            m = re.compile(r"-?\d+").match(self.s, self.i)
            if not m:
                self.fail("bad number")
            self.i = m.end()
        else:
            self.call()
        self.accessors()

    def string(self):
        self.i += 1
        while True:
            j = self.s.find("'", self.i)
            if j < 0:
                self.fail("unterminated string")
            if self.s.startswith("''", j):
                self.i = j + 2
                continue
            self.i = j + 1
            return

    def call(self):
        m = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(self.s, self.i)
        if not m:
            self.fail("expected a function name")
        name, self.i = m.group(), m.end()
        self.ws()
        if self.i >= len(self.s) or self.s[self.i] != "(":
            self.fail(f"{name} is not called")
        self.i += 1
        args = []
        self.ws()
        if self.s[self.i:self.i + 1] == ")":
            self.i += 1
        else:
            while True:
                start = self.i
                self.value()
                args.append(self.s[start:self.i].strip())
                self.ws()
                c = self.s[self.i:self.i + 1]
                self.i += 1
                if c == ")":
                    break
                if c != ",":
                    self.fail("expected , or )")
        self.calls.append((name, args))

    def accessors(self):
        while self.i < len(self.s) and self.s[self.i] in ".[":
            if self.s[self.i] == ".":
                m = re.compile(r"\.[A-Za-z_$][A-Za-z0-9_$]*").match(self.s, self.i)
                if not m:
                    self.fail("bad property access")
                self.i = m.end()
            else:
                self.i += 1
                self.value()
                self.ws()
                if self.s[self.i:self.i + 1] != "]":
                    self.fail("expected ]")
                self.i += 1


def literal(arg):
    """The text of a string-literal argument, else None."""
    if len(arg) >= 2 and arg[0] == arg[-1] == "'":
        return arg[1:-1].replace("''", "'")
    return None


def walk(node, path):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")
    elif isinstance(node, str) and node.startswith("[") and not node.startswith("[["):
        yield path, node


def check_expressions(t, types):
    params, variables = set(t.get("parameters", {})), set(t.get("variables", {}))
    for path, text in walk(t, "$"):
        if not text.endswith("]"):
            problems.append(f"{path}: an expression must end with ]: {text}")
            continue
        try:
            calls = Expr(text[1:-1]).parse()
        except ValueError as e:
            problems.append(f"{path}: {e}")
            continue
        for name, args in calls:
            if name not in FUNCTIONS:
                problems.append(f"{path}: unknown function {name}()")
            if name in ("parameters", "variables") and args:
                declared = params if name == "parameters" else variables
                ref = literal(args[0])
                if ref is not None and ref not in declared:
                    problems.append(f"{path}: {name}('{ref}') is not declared")
            if name in ("resourceId", "subscriptionResourceId", "extensionResourceId"):
                for a in args:
                    ty = literal(a)
                    if ty and re.fullmatch(r"[A-Za-z]+\.[A-Za-z.]+(/[A-Za-z]+)+", ty):
                        if ty not in types and ty not in BUILT_IN:
                            problems.append(f"{path}: {name}() names type {ty}, not in the template")
                        break


def type_ok(kind, v):
    kind = kind.lower()
    if isinstance(v, str) and v.startswith("[") and not v.startswith("[["):
        return True  # an expression: its type is known only at deployment
    return {
        "string": isinstance(v, str), "securestring": isinstance(v, str),
        "int": isinstance(v, int) and not isinstance(v, bool), "bool": isinstance(v, bool),
        "object": isinstance(v, dict), "secureobject": isinstance(v, dict),
        "array": isinstance(v, list),
    }[kind]


def main(path):
    with open(path) as f:
        t = json.load(f)
    if not str(t.get("$schema", "")).endswith("deploymentTemplate.json#"):
        problems.append("$schema: not a deployment template")
    if not re.fullmatch(r"\d+(\.\d+){3}", str(t.get("contentVersion", ""))):
        problems.append("contentVersion: expected a.b.c.d")
    for k in set(t) - SECTIONS:
        problems.append(f"{k}: not a template section")
    if not isinstance(t.get("resources"), list):
        problems.append("resources: missing or not an array")
        t["resources"] = []
    for name, p in t.get("parameters", {}).items():
        kind = str(p.get("type", ""))
        if kind.lower() not in PARAM_TYPES:
            problems.append(f"parameters.{name}: unknown type {kind!r}")
            continue
        if "defaultValue" in p:
            d = p["defaultValue"]
            if not type_ok(kind, d):
                problems.append(f"parameters.{name}: default {d!r} is not a {kind}")
            if "allowedValues" in p and d not in p["allowedValues"]:
                problems.append(f"parameters.{name}: default {d!r} not in allowedValues")
            if isinstance(d, int) and not isinstance(d, bool):
                if d < p.get("minValue", d) or d > p.get("maxValue", d):
                    problems.append(f"parameters.{name}: default {d} outside minValue/maxValue")
    types = {r.get("type") for r in t["resources"]}
    for i, r in enumerate(t["resources"]):
        where = f"resources[{i}] ({r.get('type')})"
        ty = str(r.get("type", ""))
        if not re.fullmatch(r"[A-Za-z]+\.[A-Za-z.]+(/[A-Za-z]+)+", ty):
            problems.append(f"{where}: type is not Provider.Namespace/type")
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", str(r.get("apiVersion", ""))):
            problems.append(f"{where}: apiVersion is not a date")
        name = r.get("name")
        if not name:
            problems.append(f"{where}: no name")
        elif not name.startswith("["):
            levels = ty.count("/")
            if name.count("/") + 1 != levels:
                problems.append(f"{where}: name {name!r} needs {levels} segment(s), one per type level")
        for d in r.get("dependsOn", []):
            if d.startswith("["):
                continue  # checked with the expressions (resourceId types)
            if not any(d == x.get("name") for x in t["resources"]):
                problems.append(f"{where}: dependsOn {d!r} names no resource of the template")
    for name, o in t.get("outputs", {}).items():
        if str(o.get("type", "")).lower() not in PARAM_TYPES:
            problems.append(f"outputs.{name}: unknown type {o.get('type')!r}")
        if "value" not in o and "copy" not in o:
            problems.append(f"outputs.{name}: no value")
    check_expressions(t, types)
    for p in problems:
        print(f"{path}: {p}")
    if problems:
        return 1
    print(f"{path}: {len(t['resources'])} resources, every expression parsed and resolved: ok")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: check-arm.py TEMPLATE.json")
    sys.exit(main(sys.argv[1]))
