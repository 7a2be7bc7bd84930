import { describe, expect, it } from 'vitest';
import { SseParser } from './sse';

describe('SseParser', () => {
  it('parses messages with id, event and data', () => {
    const p = new SseParser();
    const out = p.feed('id: 1\nevent: status\ndata: {"a":1}\n\nid: 2\nevent: step\ndata: {"b":2}\n\n');
    expect(out).toEqual([
      { id: '1', event: 'status', data: '{"a":1}' },
      { id: '2', event: 'step', data: '{"b":2}' },
    ]);
    expect(p.lastEventId).toBe('2');
  });

  it('joins chunks split anywhere, CRLF included', () => {
    const text = 'id: 7\r\nevent: epoch\r\ndata: {"x":\r\ndata: 1}\r\n\r\n';
    for (let cut = 0; cut <= text.length; cut++) {
      const p = new SseParser();
      const out = [...p.feed(text.slice(0, cut)), ...p.feed(text.slice(cut))];
      expect(out, `cut at ${cut}`).toEqual([{ id: '7', event: 'epoch', data: '{"x":\n1}' }]);
    }
  });

  it('accepts CR line endings and data without a space', () => {
    const p = new SseParser();
    expect(p.feed('data:one\rdata:two\r\r')).toEqual([]); // the final CR may start a CRLF
    expect(p.feed(':')).toEqual([{ id: null, event: 'message', data: 'one\ntwo' }]);
  });

  it('ignores comments (keep-alives), unknown fields and empty messages', () => {
    const p = new SseParser();
    expect(p.feed(': keep-alive\n\nfoo: bar\n\n\n')).toEqual([]);
    expect(p.feed('data: x\n\n')).toEqual([{ id: null, event: 'message', data: 'x' }]);
  });

  it('keeps the last id for later messages and reads retry', () => {
    const p = new SseParser();
    p.feed('id: 4\ndata: a\n\n');
    expect(p.feed('retry: 1500\ndata: b\n\n')).toEqual([{ id: '4', event: 'message', data: 'b' }]);
    expect(p.retry).toBe(1500);
    p.feed('retry: soon\n\n');
    expect(p.retry).toBe(1500);
  });

  it('keeps an incomplete message until its blank line', () => {
    const p = new SseParser();
    expect(p.feed('id: 9\ndata: {"partial": tr')).toEqual([]);
    expect(p.feed('ue}\n')).toEqual([]);
    expect(p.feed('\n')).toEqual([{ id: '9', event: 'message', data: '{"partial": true}' }]);
  });
});
