import { describe, expect, it } from 'vitest';
import { fieldsFromSchema, initialValues, label, serverErrors, validate } from './schemaForm';

// The train_micron and evaluate schemas as GET /v1/job-kinds serves them.
const micron = {
  type: 'object',
  additionalProperties: false,
  example: { backend: 'flex', epochs: 40, recipe: 'faithful', seed: 1203 },
  properties: {
    backend: { type: 'string', default: 'flex', description: 'Compute backend' },
    epochs: { type: 'integer', format: 'int32', minimum: 1, maximum: 500, default: 40, description: 'Epochs' },
    recipe: { type: 'string', default: 'faithful' },
    seed: { type: 'integer', format: 'int64', minimum: 0, maximum: 4294967295, default: 1203 },
  },
};
const evaluate = {
  type: 'object',
  required: ['model_id'],
  example: { model_id: '019ae4a0-6a3c-7b51-9a43-6f0d3c1c2b10', split: 'test' },
  properties: {
    model_id: { type: 'string', format: 'uuid' },
    split: { type: 'string', enum: ['train', 'val', 'test', 'all'], default: 'test' },
  },
};

describe('schema forms', () => {
  it('turns a schema into fields with defaults', () => {
    const fields = fieldsFromSchema(micron);
    expect(fields.map((f) => [f.name, f.type, f.required])).toEqual([
      ['backend', 'string', false],
      ['epochs', 'integer', false],
      ['recipe', 'string', false],
      ['seed', 'integer', false],
    ]);
    expect(initialValues(fields)).toEqual({ backend: 'flex', epochs: '40', recipe: 'faithful', seed: '1203' });
    const ev = fieldsFromSchema(evaluate);
    expect(ev[0]).toMatchObject({ name: 'model_id', required: true, format: 'uuid', example: evaluate.example.model_id });
    expect(ev[1]).toMatchObject({ type: 'enum', options: ['train', 'val', 'test', 'all'] });
    expect(initialValues(ev)).toEqual({ model_id: '', split: 'test' });
    expect(fieldsFromSchema(null)).toEqual([]);
    expect(fieldsFromSchema({ type: 'object' })).toEqual([]);
  });

  it('sends the defaults as typed values', () => {
    const fields = fieldsFromSchema(micron);
    expect(validate(fields, initialValues(fields))).toEqual({
      params: { backend: 'flex', epochs: 40, recipe: 'faithful', seed: 1203 },
      errors: {},
    });
  });

  it('checks numbers, bounds, requirements, enums and ids before sending', () => {
    const fields = fieldsFromSchema(micron);
    const bad = validate(fields, { backend: 'flex', epochs: '0', recipe: '', seed: '1.5' });
    expect(bad.errors).toEqual({ epochs: 'must be from 1 to 500', seed: 'must be a whole number' });
    expect(bad.params).toEqual({ backend: 'flex' }); // an empty optional field is left to the server
    expect(validate(fields, { epochs: '501' }).errors.epochs).toBe('must be from 1 to 500');
    expect(validate(fields, { epochs: 'ten' }).errors.epochs).toBe('must be a whole number');
    expect(validate(fields, { epochs: ' 3 ' }).params.epochs).toBe(3);
    const ev = fieldsFromSchema(evaluate);
    expect(validate(ev, { model_id: '', split: 'test' }).errors).toEqual({ model_id: 'is required' });
    expect(validate(ev, { model_id: 'abc', split: 'x' }).errors).toEqual({
      model_id: 'must be an id (UUID)',
      split: 'must be one of train, val, test, all',
    });
    expect(validate(ev, { model_id: evaluate.example.model_id, split: 'val' }).params).toEqual({ model_id: evaluate.example.model_id, split: 'val' });
  });

  it('maps the server’s validation pointers to fields', () => {
    const fields = fieldsFromSchema(micron);
    expect(
      serverErrors(fields, [
        { pointer: '/params/recipe', detail: 'must be `faithful` or `minibatch`' },
        { pointer: '/params/recipe', detail: 'second' },
        { pointer: '/kind', detail: 'unknown job kind' },
      ]),
    ).toEqual({ recipe: 'must be `faithful` or `minibatch`; second', '': '/kind: unknown job kind' });
  });

  it('labels fields for people', () => {
    expect(label('max_attempts')).toBe('Max attempts');
    expect(label('epochs')).toBe('Epochs');
  });
});
