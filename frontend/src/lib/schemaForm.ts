// Forms from JSON schemas: a job kind's `params_schema` (GET /v1/job-kinds)
// becomes fields with their defaults, and what a person typed becomes the
// `params` object, checked against the schema before it is sent.

export type FieldType = 'integer' | 'number' | 'string' | 'boolean' | 'enum';

export interface Field {
  name: string;
  type: FieldType;
  required: boolean;
  description: string;
  default: unknown;
  example: unknown;
  options: string[];
  minimum: number | null;
  maximum: number | null;
  format: string | null;
}

/** What the inputs hold: text for most, a boolean for checkboxes. */
export type RawValues = Record<string, string | boolean>;

type JsonSchema = Record<string, unknown>;

function isObject(x: unknown): x is JsonSchema {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function typeOf(p: JsonSchema): FieldType {
  if (Array.isArray(p.enum) && p.enum.every((v) => typeof v === 'string')) return 'enum';
  const t = Array.isArray(p.type) ? p.type.find((x) => x !== 'null') : p.type;
  if (t === 'integer' || t === 'number' || t === 'boolean') return t;
  return 'string';
}

/** The fields of an object schema, in the schema's order. */
export function fieldsFromSchema(schema: unknown): Field[] {
  if (!isObject(schema) || !isObject(schema.properties)) return [];
  const required = new Set(Array.isArray(schema.required) ? schema.required.map(String) : []);
  const example = isObject(schema.example) ? schema.example : {};
  return Object.entries(schema.properties).map(([name, raw]) => {
    const p = isObject(raw) ? raw : {};
    return {
      name,
      type: typeOf(p),
      required: required.has(name),
      description: typeof p.description === 'string' ? p.description : '',
      default: p.default,
      example: example[name],
      options: Array.isArray(p.enum) ? p.enum.map(String) : [],
      minimum: typeof p.minimum === 'number' ? p.minimum : null,
      maximum: typeof p.maximum === 'number' ? p.maximum : null,
      format: typeof p.format === 'string' ? p.format : null,
    };
  });
}

/** The inputs' starting values: each field's default (empty when it has none). */
export function initialValues(fields: Field[]): RawValues {
  const out: RawValues = {};
  for (const f of fields) {
    if (f.type === 'boolean') out[f.name] = f.default === true;
    else out[f.name] = f.default === undefined || f.default === null ? '' : String(f.default);
  }
  return out;
}

/** A field's label: `max_attempts` → `Max attempts`. */
export function label(name: string): string {
  const words = name.replace(/_/g, ' ');
  return words.charAt(0).toUpperCase() + words.slice(1);
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export interface Checked {
  params: Record<string, unknown>;
  /** Error messages by field name. */
  errors: Record<string, string>;
}

/**
 * Checks the typed values against the fields. Empty optional fields are
 * left out (the server fills their defaults).
 */
export function validate(fields: Field[], values: RawValues): Checked {
  const params: Record<string, unknown> = {};
  const errors: Record<string, string> = {};
  for (const f of fields) {
    const raw = values[f.name];
    if (f.type === 'boolean') {
      params[f.name] = raw === true;
      continue;
    }
    const text = typeof raw === 'string' ? raw.trim() : '';
    if (text === '') {
      if (f.required) errors[f.name] = 'is required';
      continue;
    }
    switch (f.type) {
      case 'integer':
      case 'number': {
        const ok = f.type === 'integer' ? /^[+-]?\d+$/.test(text) : /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(text);
        const n = Number(text);
        if (!ok || !Number.isFinite(n)) {
          errors[f.name] = f.type === 'integer' ? 'must be a whole number' : 'must be a number';
        } else if (f.type === 'integer' && !Number.isSafeInteger(n)) {
          errors[f.name] = 'is too large';
        } else if (f.minimum !== null && n < f.minimum) {
          errors[f.name] = f.maximum !== null ? `must be from ${f.minimum} to ${f.maximum}` : `must be at least ${f.minimum}`;
        } else if (f.maximum !== null && n > f.maximum) {
          errors[f.name] = f.minimum !== null ? `must be from ${f.minimum} to ${f.maximum}` : `must be at most ${f.maximum}`;
        } else {
          params[f.name] = n;
        }
        break;
      }
      case 'enum':
        if (!f.options.includes(text)) errors[f.name] = `must be one of ${f.options.join(', ')}`;
        else params[f.name] = text;
        break;
      default:
        if (f.format === 'uuid' && !UUID.test(text)) errors[f.name] = 'must be an id (UUID)';
        else params[f.name] = text;
    }
  }
  return { params, errors };
}

/**
 * Maps a validation problem's pointers (`/params/epochs`, `/kind`) to field
 * names; what maps to no field is returned under `''`.
 */
export function serverErrors(fields: Field[], errors: { pointer: string; detail: string }[]): Record<string, string> {
  const names = new Set(fields.map((f) => f.name));
  const out: Record<string, string> = {};
  for (const e of errors) {
    const m = /^\/params\/([^/]+)/.exec(e.pointer);
    const name = m ? m[1]!.replace(/~1/g, '/').replace(/~0/g, '~') : null;
    if (name && names.has(name)) out[name] = out[name] ? `${out[name]}; ${e.detail}` : e.detail;
    else out[''] = `${out[''] ? `${out['']}; ` : ''}${e.pointer}: ${e.detail}`;
  }
  return out;
}
