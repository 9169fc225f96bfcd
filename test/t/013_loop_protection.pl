# Copyright (c) 2026, the asyncjobs authors
#
# Loop protection (DESIGN section 6): a job enqueued by a running job gets
# its parent's depth + 1 and correlationid.  A handler that enqueues itself
# forever makes a chain that stops at asyncjobs.max_depth (default 8): the
# job of depth 8 fails permanently with SQLSTATE AJ002 and a message that
# names the infinite loop and asyncjobs.max_depth, and no job of depth 9
# exists.  Catching the error in the handler does not save the job.  The
# workers follow the server's setting: SET in the enqueuing session changes
# nothing, ALTER SYSTEM + reload lets a deeper chain through.

use strict;
use warnings;

# test/perl is found without prove -I (PGXS drops a PROVE_FLAGS set before
# it is included)
use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = AsyncJobsNode->new_node('loop', max_workers => 2);

$node->safe_psql(
	'postgres', q{
	CREATE TABLE visits (job bigint NOT NULL, chain text NOT NULL, n int NOT NULL,
	                     max_depth text NOT NULL);

	-- Records its visit and enqueues itself with n + 1, for ever, or while
	-- n < data->'stop' if given.
	CREATE FUNCTION looper(data jsonb) RETURNS text
	LANGUAGE plpgsql AS $$
	DECLARE
		n int := (data->>'n')::int;
	BEGIN
		INSERT INTO visits VALUES (asyncjobs.current_job(), data->>'chain', n,
		                           current_setting('asyncjobs.max_depth'));
		IF data ? 'stop' AND n >= (data->>'stop')::int THEN
			RETURN 'stopped';
		END IF;
		PERFORM asyncjobs.enqueue('loop', data || jsonb_build_object('n', n + 1));
		RETURN 'enqueued';
	END
	$$;
	SELECT asyncjobs.register_operation('loop', 'looper(jsonb)');

	-- The same, but it catches the loop protection's error.
	CREATE FUNCTION looper_catch(data jsonb) RETURNS text
	LANGUAGE plpgsql AS $$
	DECLARE
		n int := (data->>'n')::int;
	BEGIN
		INSERT INTO visits VALUES (asyncjobs.current_job(), data->>'chain', n,
		                           current_setting('asyncjobs.max_depth'));
		BEGIN
			PERFORM asyncjobs.enqueue('loop_catch', data || jsonb_build_object('n', n + 1));
		EXCEPTION WHEN SQLSTATE 'AJ002' THEN
			RETURN 'caught';
		END;
		RETURN 'enqueued';
	END
	$$;
	SELECT asyncjobs.register_operation('loop_catch', 'looper_catch(jsonb)');
});

# The jobs of a chain, by depth: "depth:statuscode" joined by spaces.
sub chain_summary
{
	my ($chain) = @_;
	return $node->safe_psql(
		'postgres', qq{
		SELECT string_agg(depth || ':' || statuscode, ' ' ORDER BY depth, asyncoperationid)
		  FROM asyncjobs.asyncoperation WHERE data->>'chain' = '$chain'});
}

# Checks the lineage of a chain: one job per depth 1..$n, data n = depth,
# each the child of the one before, all of one correlation.
sub check_lineage
{
	my ($chain, $n) = @_;
	is( $node->safe_psql(
			'postgres', qq{
			SELECT count(*) || ' ' || count(DISTINCT depth) || ' ' || min(depth) || ' '
			       || max(depth) || ' ' || count(DISTINCT correlationid) || ' '
			       || bool_and((data->>'n')::int = depth)
			  FROM asyncjobs.asyncoperation WHERE data->>'chain' = '$chain'}),
		"$n $n 1 $n 1 true",
		"$chain: $n jobs, one of each depth 1..$n, one correlationid, data passed along");
	is( $node->safe_psql(
			'postgres', qq{
			SELECT count(*) FROM asyncjobs.asyncoperation c
			  JOIN asyncjobs.asyncoperation p ON p.asyncoperationid = c.parentid
			 WHERE c.data->>'chain' = '$chain' AND p.data->>'chain' = '$chain'
			   AND c.depth = p.depth + 1}),
		$n - 1,
		"$chain: each job past the first is the child of the one before");
}

###########################################################################
# the endless chain stops at depth 8
###########################################################################

# A SET in the enqueuing session does not reach the workers: they follow
# the server's setting (8).
my $first = $node->safe_psql(
	'postgres', q{
	SET asyncjobs.max_depth = 12;
	SELECT asyncjobs.enqueue('loop', jsonb_build_object('chain', 'c8', 'n', 1));});
ok($node->wait_for_jobs('postgres', q{data->>'chain' = 'c8'}, 20),
	'c8: the chain comes to an end');
is(chain_summary('c8'), '1:30 2:30 3:30 4:30 5:30 6:30 7:30 8:31',
	'c8: depths 1..7 Succeeded, the job of depth 8 Failed');
check_lineage('c8', 8);
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM asyncjobs.asyncoperation WHERE data->>'chain' = 'c8' AND depth > 8}),
	'0',
	'c8: no job of depth 9 exists');

my $last = $node->safe_psql(
	'postgres',
	q{SELECT asyncoperationid FROM asyncjobs.asyncoperation
	   WHERE data->>'chain' = 'c8' AND depth = 8});
my $j = $node->job('postgres', $last);
is($j->{errorcode},  'AJ002', 'c8: the depth-8 job failed with SQLSTATE AJ002');
is($j->{retrycount}, 0,       'c8: at once, without a retry (permanent)');
is(scalar @{ $j->{attempts} }, 1, 'c8: in one attempt');
like($j->{message}, qr/infinite loop/i, 'c8: the message says infinite loop');
like($j->{message}, qr/asyncjobs\.max_depth/,
	'c8: the message names asyncjobs.max_depth');
like($j->{friendlymessage}, qr/infinite loop/i,
	'c8: so does the friendly message');
note("c8: message of the depth-8 job:\n$j->{message}");
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(n::text, ' ' ORDER BY n) FROM visits WHERE chain = 'c8'}),
	'1 2 3 4 5 6 7',
	"c8: the failed job's own writes were rolled back");
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(DISTINCT max_depth, ' ') FROM visits WHERE chain = 'c8'}),
	'8',
	'c8: the jobs ran with asyncjobs.max_depth 8 (the session SET did not reach them)');

###########################################################################
# catching the error does not save the job
###########################################################################

$node->safe_psql('postgres',
	q{SELECT asyncjobs.enqueue('loop_catch', jsonb_build_object('chain', 'catch', 'n', 1))});
ok($node->wait_for_jobs('postgres', q{data->>'chain' = 'catch'}, 20),
	'catch: the chain comes to an end');
is(chain_summary('catch'), '1:30 2:30 3:30 4:30 5:30 6:30 7:30 8:31',
	'catch: the job of depth 8 Failed although its handler caught the error');
check_lineage('catch', 8);
$last = $node->safe_psql(
	'postgres',
	q{SELECT asyncoperationid FROM asyncjobs.asyncoperation
	   WHERE data->>'chain' = 'catch' AND depth = 8});
$j = $node->job('postgres', $last);
is($j->{errorcode},  'AJ002', 'catch: with SQLSTATE AJ002');
is($j->{retrycount}, 0,       'catch: permanently');
like($j->{message}, qr/infinite loop/i, 'catch: the message says infinite loop');
like($j->{message}, qr/asyncjobs\.max_depth/,
	'catch: the message names asyncjobs.max_depth');
ok(!defined $j->{result}, 'catch: no result ("caught") was stored');
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM visits WHERE chain = 'catch' AND n = 8}),
	'0',
	"catch: the failed job's writes were rolled back");

###########################################################################
# a chain that stops at depth 8 by itself is fine
###########################################################################

$node->safe_psql('postgres',
	q{SELECT asyncjobs.enqueue('loop', jsonb_build_object('chain', 'stop8', 'n', 1, 'stop', 8))});
ok($node->wait_for_jobs('postgres', q{data->>'chain' = 'stop8'}, 20),
	'stop8: the chain comes to an end');
is(chain_summary('stop8'), '1:30 2:30 3:30 4:30 5:30 6:30 7:30 8:30',
	'stop8: a chain 8 deep that stops by itself all Succeeded');

###########################################################################
# asyncjobs.max_depth = 12 on the server lets a 12-deep chain through
###########################################################################

$node->safe_psql('postgres',
	'ALTER SYSTEM SET asyncjobs.max_depth = 12; SELECT pg_reload_conf();');
ok($node->poll_until('postgres', 'SHOW asyncjobs.max_depth', '12', 10),
	'the server has asyncjobs.max_depth = 12');
# The workers reload when the SIGHUP sets their latch; a probe job tells
# when a worker sees the new value (and so will every later job: both
# workers reload before their next claim).
ok( $node->poll_until(
		'postgres', q{
		SELECT asyncjobs.enqueue_sql(
		           'SELECT 1 WHERE current_setting(''asyncjobs.max_depth'') = ''12''') AS probe
		\gset
		SELECT asyncjobs.wait(:probe) = 30
		   AND (SELECT result->>'rows' FROM asyncjobs.asyncoperation
		         WHERE asyncoperationid = :probe) = '1'},
		't', 10),
	'the workers see asyncjobs.max_depth = 12');

$node->safe_psql('postgres',
	q{SELECT asyncjobs.enqueue('loop', jsonb_build_object('chain', 'stop12', 'n', 1, 'stop', 12))});
ok($node->wait_for_jobs('postgres', q{data->>'chain' = 'stop12'}, 20),
	'stop12: the chain comes to an end');
is( chain_summary('stop12'),
	join(' ', map { "$_:30" } 1 .. 12),
	'stop12: all 12 jobs of a 12-deep chain Succeeded');
check_lineage('stop12', 12);

# and an endless chain now stops at 12
$node->safe_psql('postgres',
	q{SELECT asyncjobs.enqueue('loop', jsonb_build_object('chain', 'c12', 'n', 1))});
ok($node->wait_for_jobs('postgres', q{data->>'chain' = 'c12'}, 20),
	'c12: the endless chain comes to an end');
is( chain_summary('c12'),
	join(' ', (map { "$_:30" } 1 .. 11), '12:31'),
	'c12: it stops at depth 12, the job of depth 12 Failed');
$last = $node->safe_psql(
	'postgres',
	q{SELECT asyncoperationid FROM asyncjobs.asyncoperation
	   WHERE data->>'chain' = 'c12' AND depth = 12});
$j = $node->job('postgres', $last);
is($j->{errorcode}, 'AJ002', 'c12: with SQLSTATE AJ002');
like($j->{message}, qr/\(12\)/, 'c12: the message gives the limit, 12');

$node->safe_psql('postgres',
	'ALTER SYSTEM RESET asyncjobs.max_depth; SELECT pg_reload_conf();');

$node->stop;
done_testing();
