# Copyright (c) 2026, the asyncjobs authors
#
# Steps (asyncjobs.register_step), end to end with the real workers: each
# committed INSERT, UPDATE and DELETE enqueues exactly one job, owned by
# and run as the writing role, with the row in its data and its key in
# regardingobjectid; a rolled-back write enqueues nothing; unregister_step
# stops it.  And the two loop rules of DESIGN section 6 stop a step whose
# job writes its own table: the depth rule (the job at depth 8 fails with
# AJ002, "infinite loop detected") and the per-row rule (with max_depth
# raised, the 17th run of a step for one row within an hour is Canceled).

use strict;
use warnings;

# test/perl is found without prove -I (PGXS drops a PROVE_FLAGS set before
# it is included)
use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = AsyncJobsNode->new_node('steps', max_workers => 2);

$node->safe_psql(
	'postgres', q{
	CREATE ROLE tabowner LOGIN;
	CREATE ROLE writer LOGIN;
	GRANT CREATE ON SCHEMA public TO tabowner;
});

$node->psql_as(
	'tabowner', 'postgres', q{
	CREATE TABLE items (id int PRIMARY KEY, label text);
	-- what each job saw, written by the job
	CREATE TABLE seen (job bigint, ran_as text, event text, id int);
	CREATE FUNCTION record_change(data jsonb) RETURNS text
	LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO seen VALUES (asyncjobs.current_job(), current_user,
		    data->>'event', coalesce(data->'new'->>'id', data->'old'->>'id')::int);
		RETURN current_user;
	END
	$$;
	GRANT SELECT, INSERT, UPDATE, DELETE ON items TO writer;
	GRANT INSERT ON seen TO writer;
	SELECT asyncjobs.register_operation('record', 'record_change(jsonb)',
	                                    max_retries => 0);
	SELECT asyncjobs.register_step('items', 'INSERT', 'record');
	SELECT asyncjobs.register_step('items', 'update', 'record');
	SELECT asyncjobs.register_step('items', 'Delete', 'record');
});

# the ids of the jobs of an operation after a given id, in order
sub jobs_of
{
	my ($op, $after) = @_;
	my $ids = $node->safe_psql('postgres',
		    "SELECT string_agg(asyncoperationid::text, ',' ORDER BY asyncoperationid) "
		  . "FROM asyncjobs.asyncoperation WHERE messagename = '$op' "
		  . "AND asyncoperationid > $after");
	return $ids eq '' ? () : split(/,/, $ids);
}

sub count_jobs_of
{
	my @ids = jobs_of(@_);
	return scalar @ids;
}

sub last_id
{
	return $node->safe_psql('postgres',
		'SELECT coalesce(max(asyncoperationid), 0) FROM asyncjobs.asyncoperation');
}

#
# INSERT, UPDATE and DELETE: exactly one job each
#
my %expect = (
	INSERT => [
		q{INSERT INTO items VALUES (1, 'one')},
		{ new => { id => 1, label => 'one' } }
	],
	UPDATE => [
		q{UPDATE items SET label = 'uno' WHERE id = 1},
		{ new => { id => 1, label => 'uno' }, old => { id => 1, label => 'one' } }
	],
	DELETE => [
		q{DELETE FROM items WHERE id = 1},
		{ old => { id => 1, label => 'uno' } }
	]);
for my $event (qw(INSERT UPDATE DELETE))
{
	my ($sql, $rows) = @{ $expect{$event} };
	my $before = last_id();
	$node->psql_as('writer', 'postgres', $sql);
	my @jobs = jobs_of('record', $before);
	is(scalar @jobs, 1, "$event enqueues exactly one job");
	next unless @jobs;
	is($node->wait_for_job('postgres', $jobs[0]), 30, "$event job succeeded");
	my $j = $node->job('postgres', $jobs[0]);
	is_deeply(
		$j->{data},
		{ table => 'public.items', event => $event, %$rows },
		"$event job has the table, the event and the row(s) in data");
	is($j->{regardingobjectid}, '1', "$event job is about row 1");
	is($j->{name}, "record on public.items ($event)", "$event job is named");
	is($j->{ownerid}, 'writer', "$event job is owned by the writing role");
	is($j->{result}, 'writer', "$event job ran as the writing role");
	is( $node->safe_psql('postgres',
			"SELECT ran_as || ' ' || event || ' ' || id FROM seen WHERE job = $jobs[0]"),
		"writer $event 1",
		"$event handler ran once");
}

# one job per row of a multi-row write
my $before = last_id();
$node->psql_as('writer', 'postgres',
	q{INSERT INTO items SELECT g, 'many' FROM generate_series(10, 14) g});
my @jobs = jobs_of('record', $before);
is(scalar @jobs, 5, 'a 5-row INSERT enqueues 5 jobs');
ok($node->wait_for_jobs('postgres', "messagename = 'record' AND asyncoperationid > $before"),
	'they complete');
is( $node->safe_psql('postgres',
		"SELECT string_agg(regardingobjectid, ',' ORDER BY regardingobjectid)
		   FROM asyncjobs.asyncoperation
		  WHERE messagename = 'record' AND asyncoperationid > $before AND statuscode = 30"),
	'10,11,12,13,14',
	'each succeeded, about its own row');

# a rolled-back write enqueues nothing, and nothing runs
$before = last_id();
$node->psql_as(
	'writer', 'postgres', q{
	BEGIN;
	INSERT INTO items VALUES (2, 'never');
	UPDATE items SET label = 'never' WHERE id = 10;
	DELETE FROM items WHERE id = 11;
	ROLLBACK;
});
my $seen_before = $node->safe_psql('postgres', 'SELECT count(*) FROM seen');
# a committed job enqueued after the rolled-back ones, to be sure the
# workers had every chance to run anything the rollback left behind
my $marker = $node->safe_psql('postgres', q{SELECT asyncjobs.enqueue_sql('SELECT 1')});
is($node->wait_for_job('postgres', $marker), 30, 'a later job runs');
is(count_jobs_of('record', $before), 0, 'a rolled-back write enqueues no job');
is($node->safe_psql('postgres', 'SELECT count(*) FROM seen'),
	$seen_before, 'and no handler ran');

# unregister stops it (and drops the trigger with the event's last step)
$node->psql_as('tabowner', 'postgres',
	q{SELECT asyncjobs.unregister_step('items', 'INSERT', 'record')});
is( $node->safe_psql('postgres',
		q{SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger
		   WHERE tgrelid = 'items'::regclass}),
	'asyncjobs_step_delete,asyncjobs_step_update',
	'the INSERT trigger is gone');
$before = last_id();
$node->psql_as('writer', 'postgres', q{INSERT INTO items VALUES (3, 'quiet')});
is(count_jobs_of('record', $before), 0, 'an INSERT after unregister_step enqueues nothing');
$node->psql_as('writer', 'postgres', q{UPDATE items SET label = 'loud' WHERE id = 3});
@jobs = jobs_of('record', $before);
is(scalar @jobs, 1, 'the UPDATE step still fires');
is($node->wait_for_job('postgres', $jobs[0]), 30, 'and its job succeeds') if @jobs;

#
# Loop protection (a): a step whose job inserts into its own table, a new
# key each time.  The jobs form one chain (one correlationid, depth + 1
# each); the job at depth 8 may not enqueue depth 9: it fails, AJ002.
#
$node->psql_as(
	'tabowner', 'postgres', q{
	CREATE TABLE chain (id serial PRIMARY KEY, parent int);
	CREATE FUNCTION chain_again(data jsonb) RETURNS void
	LANGUAGE sql AS $$
		INSERT INTO chain (parent) VALUES ((data->'new'->>'id')::int)
	$$;
	GRANT SELECT, INSERT ON chain TO writer;
	GRANT USAGE ON SEQUENCE chain_id_seq TO writer;
	SELECT asyncjobs.register_operation('chain_again', 'chain_again(jsonb)',
	                                    max_retries => 0);
	SELECT asyncjobs.register_step('chain', 'INSERT', 'chain_again');
});
$node->psql_as('writer', 'postgres', q{INSERT INTO chain (parent) VALUES (NULL)});
ok( $node->poll_until(
		'postgres',
		q{SELECT count(*) = 8 AND count(*) FILTER (WHERE statecode <> 3) = 0
		    FROM asyncjobs.asyncoperation WHERE messagename = 'chain_again'},
		't', 30),
	'the INSERT chain ends with 8 jobs');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(depth || ':' || statuscode, ',' ORDER BY asyncoperationid)
		    FROM asyncjobs.asyncoperation WHERE messagename = 'chain_again'}),
	'1:30,2:30,3:30,4:30,5:30,6:30,7:30,8:31',
	'depths 1 to 8: seven succeeded, the eighth failed');
is( $node->safe_psql('postgres',
		q{SELECT count(DISTINCT correlationid) FROM asyncjobs.asyncoperation
		   WHERE messagename = 'chain_again'}),
	'1', 'they share one correlationid');
my $last = $node->json_query('postgres',
	q{SELECT row_to_json(a) FROM asyncjobs.asyncoperation a
	   WHERE messagename = 'chain_again' ORDER BY asyncoperationid DESC LIMIT 1});
is($last->{errorcode}, 'AJ002', 'the failed job has errorcode AJ002');
like($last->{friendlymessage}, qr/infinite loop detected/,
	'its message says an infinite loop was detected');
is($node->safe_psql('postgres', 'SELECT count(*) FROM chain'),
	'8', 'the table has the first row and the 7 of the jobs that succeeded');
sleep(1);
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM asyncjobs.asyncoperation WHERE messagename = 'chain_again'}),
	'8', 'and the chain stays stopped');

#
# Loop protection (b): a step whose job updates the very row that fired
# it.  With the default max_depth the depth rule stops it at depth 8 too.
#
$node->psql_as(
	'tabowner', 'postgres', q{
	CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL);
	INSERT INTO counter VALUES (1, 0), (2, 0);
	CREATE FUNCTION bump(data jsonb) RETURNS int
	LANGUAGE sql AS $$
		UPDATE counter SET n = n + 1 WHERE id = (data->'new'->>'id')::int
		RETURNING n
	$$;
	GRANT SELECT, UPDATE ON counter TO writer;
	SELECT asyncjobs.register_operation('bump', 'bump(jsonb)', max_retries => 0);
	SELECT asyncjobs.register_step('counter', 'UPDATE', 'bump');
});
$node->psql_as('writer', 'postgres', q{UPDATE counter SET n = 1 WHERE id = 2});
ok( $node->poll_until(
		'postgres',
		q{SELECT count(*) = 8 AND count(*) FILTER (WHERE statecode <> 3) = 0
		    FROM asyncjobs.asyncoperation
		   WHERE messagename = 'bump' AND regardingobjectid = '2'},
		't', 30),
	'the UPDATE loop on row 2 ends with 8 jobs');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(depth || ':' || statuscode || ':' || coalesce(errorcode, ''),
		                    ',' ORDER BY asyncoperationid)
		    FROM asyncjobs.asyncoperation
		   WHERE messagename = 'bump' AND regardingobjectid = '2'}),
	'1:30:,2:30:,3:30:,4:30:,5:30:,6:30:,7:30:,8:31:AJ002',
	'stopped by the depth rule: the eighth job failed with AJ002');

# With max_depth raised, the per-row rule stops it: 16 runs succeed, the
# 17th job is recorded and Canceled at once.
$node->safe_psql('postgres',
	q{ALTER SYSTEM SET asyncjobs.max_depth = 100; SELECT pg_reload_conf();});
# the workers reload when signalled, before their next claim
sleep(1);
$node->psql_as('writer', 'postgres', q{UPDATE counter SET n = 1 WHERE id = 1});
ok( $node->poll_until(
		'postgres',
		q{SELECT count(*) = 17 AND count(*) FILTER (WHERE statecode <> 3) = 0
		    FROM asyncjobs.asyncoperation
		   WHERE messagename = 'bump' AND regardingobjectid = '1'},
		't', 60),
	'the UPDATE loop on row 1 ends with 17 jobs');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(statuscode::text, ',' ORDER BY asyncoperationid)
		    FROM asyncjobs.asyncoperation
		   WHERE messagename = 'bump' AND regardingobjectid = '1'}),
	join(',', (30) x 16, 32),
	'16 runs succeeded, the 17th job was canceled');
$last = $node->json_query('postgres',
	q{SELECT row_to_json(a) FROM asyncjobs.asyncoperation a
	   WHERE messagename = 'bump' AND regardingobjectid = '1'
	   ORDER BY asyncoperationid DESC LIMIT 1});
is($last->{depth},     17,      'the canceled job is at depth 17, within max_depth');
is($last->{errorcode}, 'AJ005', 'it has errorcode AJ005');
is($last->{startedon}, undef,   'it never started');
is($last->{ownerid},   'writer', 'it is owned by the writing role');
like(
	$last->{friendlymessage},
	qr/fired more than 16 times for row 1 within an hour, which usually means a loop.*skip rows/,
	'its message says the step fired more than 16 times for the row, a loop, and what to do');
like($last->{message}, qr/^ERROR: .*\nDETAIL: .*\nHINT: .*unregister_step/s,
	'its full message has a detail and a hint');
is($node->safe_psql('postgres', 'SELECT n FROM counter WHERE id = 1'),
	'17', 'the row was written by the first update and the 16 jobs');
sleep(1);
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM asyncjobs.asyncoperation
		   WHERE messagename = 'bump' AND regardingobjectid = '1'}),
	'17', 'and the loop stays stopped');

# another row is not held back by row 1's count
$before = last_id();
$node->psql_as('writer', 'postgres', q{UPDATE counter SET n = 100 WHERE id = 2});
@jobs = jobs_of('bump', $before);
ok(@jobs >= 1, 'a write of row 2 enqueues a job');
is($node->wait_for_job('postgres', $jobs[0]), 30, 'which runs: the limit is per row')
  if @jobs;
$node->safe_psql('postgres',
	q{SELECT asyncjobs.unregister_step('counter', 'UPDATE', 'bump')});
$node->poll_until('postgres',
	q{SELECT count(*) = 0 FROM asyncjobs.job WHERE messagename = 'bump'}, 't', 30);

$node->safe_psql('postgres',
	q{ALTER SYSTEM RESET asyncjobs.max_depth; SELECT pg_reload_conf();});

# DROP EXTENSION needs CASCADE while steps exist, and takes their triggers
my ($ret, $out, $err) = $node->psql('postgres', 'DROP EXTENSION asyncjobs');
isnt($ret, 0, 'DROP EXTENSION without CASCADE fails while steps exist');
like($err, qr/trigger asyncjobs_step_update on table items depends on/,
	'because the step triggers depend on it');
$node->safe_psql('postgres', 'DROP EXTENSION asyncjobs CASCADE');
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'asyncjobs_step_%'}),
	'0', 'DROP EXTENSION CASCADE drops the step triggers');
$node->psql_as('writer', 'postgres', q{UPDATE items SET label = 'free' WHERE id = 3});
pass('the table is writable without the extension');

$node->stop;
done_testing();
