#!/usr/bin/env node
// bench/peers/peers.js — the graphile-worker and pg-boss sides of bench/peers/run.
//
//   node peers.js setup
//   node peers.js drain   --system gw|boss --variant default|batch --procs 2 --jobs N --cap S
//   node peers.js latency --system gw|boss --variant default|batch --procs 2 --jobs N --rate R --cap S
//   node peers.js enqueue --system boss --clients C --seconds T
//
// Connects with PGHOST (a socket directory), PGPORT, PGUSER, PGDATABASE.
// Prints one JSON line with the result on stdout; progress goes to stderr.
//
// drain: the N jobs are queued first (graphile_worker.add_jobs / boss.insert),
// then PROCS worker processes are forked and get ready (pool connected,
// pg-boss started) without consuming; t0 is the server's clock_timestamp()
// read just before they are all told to go.  The end is the last completion:
// pg-boss: max(completed_on) of the jobs (server clock); graphile-worker
// deletes a completed job, so each process notes when the database
// acknowledged its last DELETE of completed jobs (this machine's clock, which
// is the server's: same host).
//
// latency: the workers run idle; jobs are queued one per commit at RATE/s
// (Poisson arrivals, like pgbench -R).  graphile-worker: SELECT
// graphile_worker.add_job('stamp', json_build_object('t', clock_timestamp()))
// (stamped in the statement, as asyncjobs' and the floor's); pg-boss has no
// SQL API: boss.send() with the client's clock read just before the call.
// The handler's first act is to read the clock; it then writes both stamps
// into public.peer_latency.
'use strict';

const path = require('node:path');
const { fork } = require('node:child_process');
const { performance } = require('node:perf_hooks');
const pg = require('pg');

const nowMs = () => performance.timeOrigin + performance.now(); // epoch ms, sub-ms resolution
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => process.stderr.write(`[peers.js ${process.pid}] ${a.join(' ')}\n`);

function parseArgs(argv) {
  const o = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith('--')) o[argv[i].slice(2)] = argv[++i];
    else o._.push(argv[i]);
  }
  return o;
}

const conn = () => ({
  host: process.env.PGHOST,
  port: Number(process.env.PGPORT || 5432),
  user: process.env.PGUSER || 'postgres',
  database: process.env.PGDATABASE || 'postgres',
});

// ---- the variants ------------------------------------------------------------
const BOSS_BATCH = Number(process.env.BOSS_BATCH || 5000);
const VARIANTS = {
  gw: {
    // graphile-worker's own defaults (config.js): concurrentJobs 1,
    // maxPoolSize 10, pollInterval 2000 ms, LISTEN/NOTIFY wake-up, no batching
    default: { worker: {}, desc: 'defaults: concurrentJobs 1, maxPoolSize 10, LISTEN/NOTIFY' },
    // the configuration of graphile-worker's own performance page
    batch: {
      worker: { concurrentJobs: 24, maxPoolSize: 25, localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 },
      desc: 'concurrentJobs 24, maxPoolSize 25, localQueue.size 500, completeJobBatchDelay 0',
    },
  },
  boss: {
    // work() defaults: batchSize 1, pollingIntervalSeconds 2
    default: { work: {}, desc: 'work() defaults: batchSize 1, pollingIntervalSeconds 2' },
    batch: {
      work: { batchSize: BOSS_BATCH, pollingIntervalSeconds: 0.5 },
      desc: `work() batchSize ${BOSS_BATCH}, pollingIntervalSeconds 0.5 (the minimum)`,
    },
  },
};
const QUEUE = 'bench'; // the pg-boss queue

async function query(sql, params) {
  const c = new pg.Client(conn());
  await c.connect();
  try { return (await c.query(sql, params)).rows; } finally { await c.end(); }
}
const serverNowMs = async () => Number((await query('SELECT extract(epoch FROM clock_timestamp()) * 1000 AS t'))[0].t);

function newBoss(extra = {}) {
  const PgBoss = require('pg-boss');
  const boss = new PgBoss({ ...conn(), ...extra });
  boss.on('error', (e) => log('pg-boss error:', e.message));
  return boss;
}

async function resetBossQueue() {
  // (boss.deleteQueue() fails while the queue's partition holds jobs: its
  // foreign key is checked before the partition is dropped)
  const boss = newBoss({ supervise: false, schedule: false });
  await boss.start();
  if (!(await boss.getQueue(QUEUE))) await boss.createQueue(QUEUE);
  await boss.stop({ graceful: false, wait: true });
  await query('TRUNCATE pgboss.job, pgboss.archive');
}

// ---- worker processes (forked) --------------------------------------------------
// Messages from the parent: {go}, {stop}.  To the parent: {ready}, {stats},
// {final}.  stats: done (completions acknowledged by the database), last (epoch
// ms of the last such acknowledgement), first (epoch ms of the first handler start).
async function child(system, variant, mode) {
  const v = VARIANTS[system][variant];
  const stats = { done: 0, last: 0, first: 0 };
  const handlerStarted = () => { if (!stats.first) stats.first = nowMs(); };
  const side = new pg.Pool({ ...conn(), max: 2 }); // the latency handlers' writes
  const stamp = async (enqSql, enq, t) => {
    await side.query(`INSERT INTO public.peer_latency (sys, variant, enq_ts, run_ts)
                      VALUES ($1, $2, ${enqSql}, to_timestamp($4::float8 / 1000))`,
                     [system, variant, enq, t]);
  };
  let start, stop;

  if (system === 'gw') {
    const { run } = require('graphile-worker');
    const max = v.worker.maxPoolSize || 10;
    const pool = new pg.Pool({ ...conn(), max });
    pool.on('error', (e) => log('pool error:', e.message));
    pool.on('connect', (c) => c.on('error', (e) => log('client error:', e.message)));
    // open every connection of the pool now, not in the timed part
    const cs = await Promise.all(Array.from({ length: max }, () => pool.connect()));
    cs.forEach((c) => c.release());
    // graphile-worker completes with DELETE ... (complete_job / complete_jobs /
    // complete_job_q prepared statements); count them when the server answers
    const orig = pg.Client.prototype.query;
    pg.Client.prototype.query = function (config, values, cb) {
      const r = orig.call(this, config, values, cb);
      if (config && typeof config === 'object' && typeof config.name === 'string'
          && config.name.startsWith('complete_job') && r && typeof r.then === 'function') {
        const n = Array.isArray(config.values && config.values[0]) ? config.values[0].length : 1;
        r.then(() => { stats.done += n; stats.last = nowMs(); }, () => {});
      }
      return r;
    };
    const taskList = mode === 'latency'
      ? { stamp: async (payload) => { const t = nowMs(); handlerStarted(); await stamp('$3::timestamptz', payload.t, t); } }
      : { noop: async () => { handlerStarted(); } };
    let runner;
    start = async () => {
      runner = await run({ pgPool: pool, taskList, noHandleSignals: true, preset: { worker: { crontabFile: '', ...v.worker } } });
    };
    stop = async () => { await runner.stop(); await pool.end(); };
  } else {
    // count pg-boss completions when the database answers (work() does not
    // wait for complete())
    const Manager = require('pg-boss/src/manager');
    const orig = Manager.prototype.complete;
    Manager.prototype.complete = async function (name, id, ...rest) {
      const r = await orig.call(this, name, id, ...rest);
      if (name === QUEUE) { stats.done += Array.isArray(id) ? id.length : 1; stats.last = nowMs(); }
      return r;
    };
    const boss = newBoss();
    await boss.start();
    const handler = mode === 'latency'
      ? async (jobs) => { const t = nowMs(); handlerStarted(); for (const j of jobs) await stamp('to_timestamp($3::float8 / 1000)', j.data.t, t); }
      : async () => { handlerStarted(); };
    start = async () => { await boss.work(QUEUE, v.work, handler); };
    stop = async () => { await boss.stop({ graceful: true, wait: true, timeout: 10000 }); };
  }

  // the parent went away (interrupted run): do not linger
  process.on('disconnect', () => process.exit(1));
  const tick = setInterval(() => process.send({ stats }), 50);
  process.on('message', async (m) => {
    try {
      if (m.go) await start();
      if (m.stop) {
        clearInterval(tick);
        await stop();
        await side.end();
        process.send({ final: stats }, () => process.exit(0));
      }
    } catch (e) {
      log('child error:', e.stack || e.message);
      process.exit(1);
    }
  });
  process.send({ ready: true });
}

// ---- the parent ---------------------------------------------------------------------
async function spawnWorkers(system, variant, mode, procs) {
  const kids = [];
  for (let i = 0; i < procs; i++) {
    const k = fork(__filename, ['child', system, variant, mode], {
      env: { ...process.env, NO_LOG_SUCCESS: '1' },
      stdio: ['ignore', 2, 2, 'ipc'], // their stdout to our stderr: ours is the result
    });
    const rec = { k, stats: { done: 0, last: 0, first: 0 }, ready: false, final: null, exited: false };
    k.on('message', (m) => {
      if (m.ready) rec.ready = true;
      if (m.stats) rec.stats = m.stats;
      if (m.final) { rec.stats = m.final; rec.final = m.final; }
    });
    k.on('exit', (code) => { rec.exited = true; rec.code = code; });
    kids.push(rec);
  }
  const t = Date.now();
  while (!kids.every((r) => r.ready)) {
    if (kids.some((r) => r.exited)) throw new Error('a worker process died while starting');
    if (Date.now() - t > 60000) throw new Error('worker processes not ready after 60 s');
    await sleep(20);
  }
  const total = () => kids.reduce((a, r) => a + r.stats.done, 0);
  const go = () => kids.forEach((r) => r.k.send({ go: true }));
  const stopAll = async () => {
    kids.forEach((r) => { if (!r.exited) r.k.send({ stop: true }); });
    const t1 = Date.now();
    while (!kids.every((r) => r.final || r.exited)) {
      if (Date.now() - t1 > 30000) { kids.forEach((r) => r.k.kill('SIGKILL')); break; }
      await sleep(20);
    }
    while (!kids.every((r) => r.exited) && Date.now() - t1 < 35000) await sleep(20);
    return kids.map((r) => r.stats);
  };
  return { kids, total, go, stopAll };
}

async function prefill(system, n) {
  if (system === 'gw') {
    await query('TRUNCATE graphile_worker._private_jobs');
    for (let done = 0; done < n; done += 10000) {
      const k = Math.min(10000, n - done);
      await query(`SELECT graphile_worker.add_jobs(array_agg(row('noop', json_build_object('n', g), null, null, null, null, null, null)::graphile_worker.job_spec))
                     FROM generate_series($1::int, $2::int) g`, [done + 1, done + k]);
    }
    await query('VACUUM ANALYZE graphile_worker._private_jobs');
  } else {
    await resetBossQueue();
    const boss = newBoss({ supervise: false, schedule: false });
    await boss.start();
    for (let done = 0; done < n; done += 5000) {
      const k = Math.min(5000, n - done);
      await boss.insert(Array.from({ length: k }, (_, i) => ({ name: QUEUE, data: { n: done + i + 1 } })));
    }
    await boss.stop({ graceful: false, wait: true });
    await query('VACUUM ANALYZE pgboss.job');
  }
  await query('CHECKPOINT');
}

async function queued(system) {
  const sql = system === 'gw'
    ? 'SELECT count(*) AS n FROM graphile_worker._private_jobs'
    : `SELECT count(*) FILTER (WHERE state < 'completed') AS n FROM pgboss.job WHERE name = '${QUEUE}'`;
  return Number((await query(sql))[0].n);
}

async function drain(o) {
  const { system, variant } = o;
  const n = Number(o.jobs), procs = Number(o.procs || 2), cap = Number(o.cap || 120);
  log(`drain ${system}/${variant}: queueing ${n} jobs`);
  await prefill(system, n);
  const q0 = await queued(system);
  const w = await spawnWorkers(system, variant, 'drain', procs);
  const t0 = await serverNowMs();
  w.go();
  let flag = 'drained';
  while (w.total() < n) {
    if (nowMs() - t0 > cap * 1000) { flag = 'capped'; break; }
    await sleep(w.total() > 0.9 * n ? 5 : 50);
  }
  const stats = await w.stopAll();
  const done = stats.reduce((a, s) => a + s.done, 0);
  let last = Math.max(...stats.map((s) => s.last));
  const firsts = stats.map((s) => s.first).filter((x) => x > 0);
  const first = firsts.length ? Math.min(...firsts) : 0;
  let serverDone = null, note = '';
  if (system === 'boss') {
    const r = (await query(`SELECT count(*) FILTER (WHERE state = 'completed') AS done,
                                   extract(epoch FROM max(completed_on)) * 1000 AS last
                              FROM pgboss.job WHERE name = $1`, [QUEUE]))[0];
    serverDone = Number(r.done);
    note = `client-side last ack ${((last - t0) / 1000).toFixed(3)} s; `;
    if (r.last != null) last = Number(r.last); // the server's clock
  }
  const left = await queued(system);
  const secs = (last - t0) / 1000;
  const counted = serverDone ?? done;
  if (flag === 'drained' && left !== 0) flag = `left=${left}`;
  return {
    system, variant, desc: VARIANTS[system][variant].desc, procs, queued: q0, done: counted,
    secs: Number(secs.toFixed(3)), jobs_s: secs > 0 ? Number((counted / secs).toFixed(1)) : 0,
    first_ms: first ? Number((first - t0).toFixed(1)) : null, flag,
    note: `${note}first handler start ${first ? (first - t0).toFixed(1) : '?'} ms after go; `
      + `first start -> last completion ${first && last > first ? (counted / ((last - first) / 1000)).toFixed(1) : '?'} jobs/s`,
  };
}

// exponential inter-arrival times, as pgbench -R
function* schedule(n, rate) {
  let t = 0;
  for (let i = 0; i < n; i++) { t += -Math.log(1 - Math.random()) * 1000 / rate; yield t; }
}

async function latency(o) {
  const { system, variant } = o;
  const n = Number(o.jobs), procs = Number(o.procs || 2), rate = Number(o.rate || 20), cap = Number(o.cap || 30);
  if (system === 'gw') await query('TRUNCATE graphile_worker._private_jobs');
  else await resetBossQueue();
  await query('TRUNCATE public.peer_latency');
  const w = await spawnWorkers(system, variant, 'latency', procs);
  w.go();
  await sleep(1000);
  let enq, close;
  if (system === 'gw') {
    const c = new pg.Client(conn());
    await c.connect();
    enq = () => c.query({ name: 'enq', text: "SELECT graphile_worker.add_job('stamp', json_build_object('t', clock_timestamp()))" });
    close = () => c.end();
  } else {
    const boss = newBoss({ supervise: false, schedule: false });
    await boss.start();
    enq = () => boss.send(QUEUE, { t: nowMs() });
    close = () => boss.stop({ graceful: false, wait: true });
  }
  const count = async () => Number((await query('SELECT count(*) AS n FROM public.peer_latency'))[0].n);
  const waitFor = async (k, ms) => {
    const t = Date.now();
    while (Date.now() - t < ms) { if ((await count()) >= k) return true; await sleep(50); }
    return false;
  };
  // warm-up: 4 jobs, discarded
  for (let i = 0; i < 4; i++) await enq();
  await waitFor(4, cap * 1000);
  await sleep(1000);
  await query('TRUNCATE public.peer_latency');
  await sleep(1000); // idle again
  const tStart = nowMs();
  for (const at of schedule(n, rate)) {
    const d = tStart + at - nowMs();
    if (d > 0) await sleep(d);
    await enq();
  }
  const achieved = n / ((nowMs() - tStart) / 1000);
  const all = await waitFor(n, cap * 1000);
  await close();
  await w.stopAll();
  const got = await count();
  return {
    system, variant, desc: VARIANTS[system][variant].desc, procs, jobs: n, done: got,
    rate: Number(achieved.toFixed(1)), flag: all ? 'ok' : `ran ${got}/${n} within ${cap} s`,
  };
}

async function enqueue(o) {
  // pg-boss only: send() from C concurrent callers for T seconds, no worker
  const c = Number(o.clients || 1), secs = Number(o.seconds || 5);
  await resetBossQueue();
  const boss = newBoss({ supervise: false, schedule: false, max: Math.max(10, c + 1) });
  await boss.start();
  let sent = 0;
  const t0 = nowMs(), end = t0 + secs * 1000;
  await Promise.all(Array.from({ length: c }, async () => {
    while (nowMs() < end) { await boss.send(QUEUE, { n: sent }); sent++; }
  }));
  const el = (nowMs() - t0) / 1000;
  await boss.stop({ graceful: false, wait: true });
  const rows = Number((await query('SELECT count(*) AS n FROM pgboss.job WHERE name = $1', [QUEUE]))[0].n);
  await resetBossQueue();
  return { system: 'boss', clients: c, secs: Number(el.toFixed(3)), sent, rows, jobs_s: Number((sent / el).toFixed(1)) };
}

async function setup() {
  const { runMigrations } = require('graphile-worker');
  const pool = new pg.Pool({ ...conn(), max: 2 });
  pool.on('error', (e) => log('pool error:', e.message));
  await runMigrations({ pgPool: pool });
  await pool.end();
  const boss = newBoss({ supervise: false, schedule: false });
  await boss.start(); // creates the pgboss schema
  await boss.stop({ graceful: false, wait: true });
  await resetBossQueue();
  const v = (p) => require(path.join(p, 'package.json')).version;
  return {
    'graphile-worker': v('graphile-worker'), 'pg-boss': v('pg-boss'), pg: v('pg'), node: process.version,
    gw_schema: (await query("SELECT max(id) AS m FROM graphile_worker.migrations"))[0].m,
  };
}

async function main() {
  const [cmd, ...rest] = process.argv.slice(2);
  if (cmd === 'child') return child(rest[0], rest[1], rest[2]);
  const o = parseArgs(rest);
  if (o.system && !VARIANTS[o.system]) throw new Error(`unknown system ${o.system}`);
  if (o.variant && !VARIANTS[o.system][o.variant]) throw new Error(`unknown variant ${o.variant}`);
  let r;
  if (cmd === 'setup') r = await setup();
  else if (cmd === 'drain') r = await drain(o);
  else if (cmd === 'latency') r = await latency(o);
  else if (cmd === 'enqueue') r = await enqueue(o);
  else throw new Error(`usage: peers.js setup|drain|latency|enqueue ...`);
  process.stdout.write(JSON.stringify(r) + '\n');
  process.exit(0);
}

main().catch((e) => { log(e.stack || e.message); process.exit(1); });
