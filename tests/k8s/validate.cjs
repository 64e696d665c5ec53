'use strict';
// Validates Kubernetes manifests offline and strictly, the way an API server
// with field validation "Strict" would refuse them:
// - objects of built-in kinds against the Kubernetes 1.27 API schemas that the
//   npm package kubernetes-models 4.5 carries (compiled validators);
// - objects of custom kinds (MPIJob) against the openAPIV3Schema of a
//   CustomResourceDefinition given with --crd, with ajv; an MPIJob's pod
//   templates also against the Kubernetes PodTemplateSpec schema.
// An unknown field (a misspelling) anywhere is an error, as are a missing
// required field, a wrong type or a value outside an enum.
//
//   NODE_PATH=build/k8s-validate/node_modules \
//     node tests/k8s/validate.cjs [--crd CRD.yaml]... [--json OUT.json] FILE.yaml...
//
// Prints one line per problem, "FILE: KIND/NAME: /json/path: what is wrong",
// and exits 1 if there is any (2 on a usage error); otherwise prints
// "N objects valid" and exits 0. --json writes every document read, as a JSON
// array of {"file", "object"}, for tests that have no YAML parser.

const fs = require('fs');
const YAML = require('yaml');
const Ajv = require('ajv');

function usage(message) {
  process.stderr.write(`validate.cjs: ${message}\n` +
    'usage: node validate.cjs [--crd CRD.yaml]... [--json OUT.json] FILE.yaml...\n');
  process.exit(2);
}

// All YAML documents of a file, or a thrown Error naming the file and line.
function readDocuments(file) {
  const documents = [];
  for (const document of YAML.parseAllDocuments(fs.readFileSync(file, 'utf8'))) {
    if (document.errors.length > 0) throw new Error(`${file}: ${document.errors[0].message}`);
    const value = document.toJS();
    if (value !== null && value !== undefined) documents.push(value);
  }
  return documents;
}

function describe(error) {
  const p = error.params || {};
  switch (error.keyword) {
    case 'additionalProperties': return `unknown field "${p.additionalProperty}"`;
    case 'required': return `missing required field "${p.missingProperty}"`;
    case 'type': return `must be ${p.type}`;
    case 'enum': return `must be one of ${JSON.stringify(p.allowedValues)}`;
    case 'format': return `must be a valid ${p.format}`;
    case 'pattern': return `must match ${p.pattern}`;
    default: return error.message || `${error.keyword} ${JSON.stringify(p)}`;
  }
}

function formatErrors(errors, prefix) {
  return (errors || []).map((e) => `${prefix}${e.instancePath || '/'}: ${describe(e)}`);
}

// Runs a compiled kubernetes-models validator on `data` and returns its
// errors plus one per field the validator never looked at. The validators
// read exactly the properties their schema defines (and every key of a map
// they check), so a key left unread is a field the schema does not have.
function validateStrictly(validate, data, prefix) {
  const readKeys = new WeakMap();
  const proxies = new WeakMap();
  const watch = (value) => {
    if (value === null || typeof value !== 'object') return value;
    if (!proxies.has(value)) {
      const keys = new Set();
      readKeys.set(value, keys);
      proxies.set(value, new Proxy(value, {
        get(target, key) {
          if (typeof key === 'string') keys.add(key);
          return watch(Reflect.get(target, key));
        },
      }));
    }
    return proxies.get(value);
  };
  const problems = validate(watch(data)) ? [] : formatErrors(validate.errors, prefix);
  const findUnread = (value, path) => {
    if (Array.isArray(value)) {
      value.forEach((item, i) => findUnread(item, `${path}/${i}`));
    } else if (value !== null && typeof value === 'object') {
      const keys = readKeys.get(value) || new Set();
      for (const key of Object.keys(value)) {
        if (keys.has(key)) findUnread(value[key], `${path}/${key}`);
        else problems.push(`${prefix}${path || '/'}: unknown field "${key}"`);
      }
    }
  };
  findUnread(data, '');
  return problems;
}

// The compiled validator of a built-in kind, or null if kubernetes-models
// has no such apiVersion and kind.
function builtinValidator(apiVersion, kind) {
  let models;
  try {
    models = require(`kubernetes-models/${apiVersion}`);
  } catch (e) {
    return null;
  }
  return modelValidator(models[kind]);
}

// A validator function (data) => bool, with .errors, from a kubernetes-models
// model class, or null if `model` is none.
function modelValidator(model) {
  if (typeof model !== 'function' || typeof model.prototype.validate !== 'function') return null;
  // Model.prototype.validate runs the kind's compiled validator on `this` and
  // throws with its errors; call it on the raw data.
  const validate = (data) => {
    try {
      model.prototype.validate.call(data);
      validate.errors = null;
      return true;
    } catch (e) {
      validate.errors = e.errors || [{ keyword: 'error', message: e.message, instancePath: '' }];
      return false;
    }
  };
  return validate;
}

// Adds additionalProperties: false wherever a schema lists properties and
// neither allows unknown fields (x-kubernetes-preserve-unknown-fields) nor
// says what extra properties may hold: the API server's strict field
// validation, made a JSON-schema rule.
function forbidUnknownFields(schema) {
  if (Array.isArray(schema)) {
    schema.forEach(forbidUnknownFields);
    return;
  }
  if (schema === null || typeof schema !== 'object') return;
  if (schema.properties && schema['x-kubernetes-preserve-unknown-fields'] !== true &&
      schema.additionalProperties === undefined) {
    schema.additionalProperties = false;
  }
  for (const key of ['properties', 'patternProperties', 'definitions']) {
    if (schema[key]) Object.values(schema[key]).forEach(forbidUnknownFields);
  }
  for (const key of ['items', 'additionalProperties', 'not', 'anyOf', 'allOf', 'oneOf']) {
    if (schema[key]) forbidUnknownFields(schema[key]);
  }
}

function crdValidators(crdFiles) {
  const ajv = new Ajv({ allErrors: true, strict: false });
  for (const keyword of ['x-kubernetes-int-or-string', 'x-kubernetes-list-map-keys', 'x-kubernetes-list-type',
    'x-kubernetes-map-type', 'x-kubernetes-preserve-unknown-fields', 'x-kubernetes-embedded-resource',
    'x-kubernetes-validations']) {
    ajv.addKeyword({ keyword, schemaType: ['boolean', 'string', 'array', 'object'] });
  }
  const inRange = (bits) => (n) => Number.isInteger(n) && n >= -(2 ** (bits - 1)) && n < 2 ** (bits - 1);
  ajv.addFormat('int32', { type: 'number', validate: inRange(32) });
  ajv.addFormat('int64', { type: 'number', validate: inRange(64) });
  ajv.addFormat('date-time', { type: 'string', validate: (s) => !Number.isNaN(Date.parse(s)) });
  const validators = new Map();
  for (const file of crdFiles) {
    for (const crd of readDocuments(file)) {
      if (crd.kind !== 'CustomResourceDefinition') throw new Error(`${file}: not a CustomResourceDefinition`);
      for (const version of crd.spec.versions) {
        const schema = JSON.parse(JSON.stringify(version.schema.openAPIV3Schema));
        forbidUnknownFields(schema);
        validators.set(`${crd.spec.group}/${version.name} ${crd.spec.names.kind}`, ajv.compile(schema));
      }
    }
  }
  return validators;
}

function main(argv) {
  const crdFiles = [];
  const files = [];
  let jsonOut = null;
  for (let i = 0; i < argv.length; ++i) {
    if (argv[i] === '--crd' || argv[i] === '--json') {
      if (i + 1 >= argv.length) usage(`${argv[i]} needs a file`);
      if (argv[i] === '--crd') crdFiles.push(argv[++i]);
      else jsonOut = argv[++i];
    } else if (argv[i].startsWith('--')) {
      usage(`unknown option ${argv[i]}`);
    } else {
      files.push(argv[i]);
    }
  }
  if (files.length === 0) usage('no manifests given');

  // Compiling a CRD's schema takes a second or two: only when needed.
  let crds = null;
  const customValidator = (apiVersion, kind) => {
    if (crds === null) crds = crdValidators(crdFiles);
    return crds.get(`${apiVersion} ${kind}`);
  };
  const objectMeta = modelValidator(require('@kubernetes-models/apimachinery/apis/meta/v1').ObjectMeta);
  const podTemplate = builtinValidator('v1', 'PodTemplateSpec');
  const problems = [];
  const read = [];
  for (const file of files) {
    let documents;
    try {
      documents = readDocuments(file);
    } catch (e) {
      problems.push(e.message);
      continue;
    }
    for (const object of documents) {
      read.push({ file, object });
      const name = `${object.kind || '?'}/${(object.metadata && object.metadata.name) || '?'}`;
      const prefix = `${file}: ${name}: `;
      const builtin = builtinValidator(object.apiVersion, object.kind);
      const custom = builtin ? null : customValidator(object.apiVersion, object.kind);
      if (builtin) {
        problems.push(...validateStrictly(builtin, object, prefix));
      } else if (custom) {
        if (!custom(object)) problems.push(...formatErrors(custom.errors, prefix));
        // The CRD leaves metadata free-form; the API server does not.
        if (object.metadata) problems.push(...validateStrictly(objectMeta, object.metadata, `${prefix}/metadata`));
        const replicas = (object.spec && object.spec.mpiReplicaSpecs) || {};
        for (const [role, replica] of Object.entries(replicas)) {
          if (replica && replica.template) {
            problems.push(...validateStrictly(podTemplate, replica.template,
              `${prefix}/spec/mpiReplicaSpecs/${role}/template`));
          }
        }
      } else {
        problems.push(`${prefix}no schema for ${object.apiVersion} ${object.kind}`);
      }
    }
  }
  if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify(read));
  // An MPIJob's pod template is checked twice (CRD and PodTemplateSpec).
  for (const problem of new Set(problems)) process.stdout.write(`${problem}\n`);
  if (problems.length > 0) process.exit(1);
  process.stdout.write(`${read.length} objects valid\n`);
}

main(process.argv.slice(2));
