# Copyright (c) 2026, the asyncjobs authors
#
# Permanent vs transient failures (DESIGN section 6): division_by_zero is
# permanent, the job ends Failed at once; SQLSTATE AJ001 asks for a retry:
# a handler that raises it once is retried and succeeds, one that always
# raises it is retried max_retries times and then ends Failed.  The error's
# DETAIL, HINT and CONTEXT are kept.

use strict;
use warnings;

# test/perl is found without prove -I (PGXS drops a PROVE_FLAGS set before
# it is included)
use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = AsyncJobsNode->new_node('errors', max_workers => 2);

$node->safe_psql(
	'postgres', q{
	CREATE TABLE effects (k text PRIMARY KEY);

	CREATE FUNCTION divide(data jsonb) RETURNS int
	LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO effects VALUES ('divide');
		RETURN 1 / (data->>'by')::int;
	END
	$$;

	-- asks for a retry on its first attempt only
	CREATE FUNCTION flaky(data jsonb) RETURNS jsonb
	LANGUAGE plpgsql AS $$
	DECLARE
		tries int;
	BEGIN
		SELECT retrycount INTO tries FROM asyncjobs.asyncoperation
		 WHERE asyncoperationid = asyncjobs.current_job();
		INSERT INTO effects VALUES ('flaky-' || tries);
		IF tries = 0 THEN
			RAISE EXCEPTION 'resource busy, try later'
				USING ERRCODE = 'AJ001', DETAIL = 'first attempt',
				      HINT = 'the worker retries';
		END IF;
		RETURN jsonb_build_object('tries', tries);
	END
	$$;

	CREATE FUNCTION always_busy(data jsonb) RETURNS void
	LANGUAGE plpgsql AS $$
	BEGIN
		RAISE EXCEPTION 'always busy' USING ERRCODE = 'AJ001';
	END
	$$;

	SELECT asyncjobs.register_operation('divide', 'divide(jsonb)',
		max_retries => 3, retry_delay => '100 ms');
	SELECT asyncjobs.register_operation('flaky', 'flaky(jsonb)',
		max_retries => 3, retry_delay => '100 ms');
	SELECT asyncjobs.register_operation('always_busy', 'always_busy(jsonb)',
		max_retries => 2, retry_delay => '100 ms');
});

my $div = $node->safe_psql('postgres',
	q{SELECT asyncjobs.enqueue('divide', '{"by": 0}')});
my $flaky = $node->safe_psql('postgres', q{SELECT asyncjobs.enqueue('flaky')});
my $busy =
  $node->safe_psql('postgres', q{SELECT asyncjobs.enqueue('always_busy')});
my $sql_div = $node->safe_psql('postgres',
	q{SELECT asyncjobs.enqueue_sql('SELECT 1 / 0', max_retries => 3)});

# permanent: Failed at once
for my $case ([ 'handler', $div ], [ 'SQL', $sql_div ])
{
	my ($what, $id) = @$case;
	is($node->wait_for_job('postgres', $id), 31,
		"$what division by zero ends Failed");
	my $j = $node->job('postgres', $id);
	is($j->{errorcode},  '22012', "$what: errorcode 22012");
	is($j->{retrycount}, 0,       "$what: no retry despite max_retries 3");
	is(scalar @{ $j->{attempts} }, 1, "$what: one attempt");
	is($j->{attempts}[0]{outcome}, 'failed', "$what: the attempt failed");
	is($j->{friendlymessage}, 'division by zero',
		"$what: friendlymessage is the primary message");
	like($j->{message}, qr/^ERROR:  division by zero/,
		"$what: message starts with the error");
}
like($node->job('postgres', $div)->{message},
	qr/CONTEXT:  PL\/pgSQL function divide\(jsonb\)/,
	'handler: message keeps the CONTEXT');
is($node->safe_psql('postgres', "SELECT count(*) FROM effects WHERE k = 'divide'"),
	'0', 'the failed attempt left no effect');

# transient once: retried, then Succeeded
is($node->wait_for_job('postgres', $flaky), 30, 'flaky job ends Succeeded');
my $j = $node->job('postgres', $flaky);
is($j->{retrycount}, 1, 'flaky: one retry');
is_deeply($j->{result}, { tries => 1 }, 'flaky: the retry produced the result');
is(scalar @{ $j->{attempts} }, 2, 'flaky: two attempts');
is($j->{attempts}[0]{outcome},   'retry', 'flaky: the first attempt asked for a retry');
is($j->{attempts}[0]{errorcode}, 'AJ001', 'flaky: with AJ001');
is($j->{attempts}[0]{detail}, 'first attempt', 'flaky: its DETAIL is kept');
is($j->{attempts}[0]{hint}, 'the worker retries', 'flaky: its HINT is kept');
is($j->{attempts}[1]{outcome}, 'succeeded', 'flaky: the second succeeded');
is( $node->safe_psql(
		'postgres',
		"SELECT string_agg(k, ',' ORDER BY k) FROM effects WHERE k LIKE 'flaky-%'"),
	'flaky-1',
	'flaky: only the successful attempt left its effect');

# transient always: retried until the budget is spent, then Failed
is($node->wait_for_job('postgres', $busy), 31, 'always_busy ends Failed');
$j = $node->job('postgres', $busy);
is($j->{errorcode},  'AJ001', 'always_busy: errorcode AJ001');
is($j->{retrycount}, 2,       'always_busy: retried max_retries (2) times');
is(scalar @{ $j->{attempts} }, 3, 'always_busy: three attempts');
is_deeply([ map { $_->{outcome} } @{ $j->{attempts} } ],
	[ 'retry', 'retry', 'failed' ], 'always_busy: retry, retry, failed');

# a per-job max_retries overrides the operation's
my $busy0 = $node->safe_psql('postgres',
	q{SELECT asyncjobs.enqueue('always_busy', max_retries => 0)});
is($node->wait_for_job('postgres', $busy0), 31,
	'always_busy with max_retries 0 ends Failed');
is($node->job('postgres', $busy0)->{retrycount}, 0, 'without a retry');

$node->stop;
done_testing();
